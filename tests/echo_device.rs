//! The echo device of `docs/writing-a-device.md` (`examples/echo_backend.rs`), served
//! in-process and driven by the library's frontend side on split and packed rings.

#[path = "../examples/echo_backend.rs"]
#[allow(dead_code)]
mod echo_backend;

use std::time::Duration;

use echo_backend::EchoDevice;
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
use vhost_user_sync::VhostUserListener;

#[test]
fn echo_round_trip_on_split_and_packed_rings() {
    let path = std::env::temp_dir().join(format!("echo-{}.sock", std::process::id()));
    let path = path.to_str().unwrap().to_string();
    let mut listener = VhostUserListener::new(&path, None).unwrap();
    let shutdown = listener.shutdown_handle();
    let server = std::thread::spawn(move || listener.serve(|| EchoDevice::new(4096)));

    for packed in [false, true] {
        // Frontend: negotiate, share memory, set up queue 0.
        let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
        let mut fe = Frontend::connect(&path).unwrap();
        let mut q = if packed {
            fe.negotiate_packed(u64::MAX, u64::MAX).unwrap();
            DriverQueue::new_packed(&mem, 0, 64).unwrap()
        } else {
            fe.negotiate(u64::MAX, u64::MAX).unwrap();
            DriverQueue::new(&mem, 0, 64).unwrap()
        };
        fe.set_mem_table(&mem).unwrap();
        q.attach(&mut fe, &mem).unwrap();
        // The config space says how much is echoed.
        assert_eq!(fe.get_config(0, 4).unwrap(), 4096u32.to_le_bytes());

        // One request: 5 readable bytes, then a 64-byte writable buffer.
        let req = mem.alloc(5, 8).unwrap();
        let resp = mem.alloc(64, 8).unwrap();
        mem.table().write(req, b"hello").unwrap();
        q.add(mem.table(), &[(req, 5, false), (resp, 64, true)])
            .unwrap();
        q.kick(mem.table()).unwrap();
        let used = q.wait_used(mem.table(), Duration::from_secs(5)).unwrap();
        assert_eq!(used.len, 5);
        let mut out = [0u8; 5];
        mem.table().read(resp, &mut out).unwrap();
        assert_eq!(&out, b"hello");
    }

    shutdown.trigger();
    server.join().unwrap().unwrap();
}
