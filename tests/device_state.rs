//! A device's own state moved between two backends (SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE):
//! a counting device whose count the guest reads from its config space, and whose worker
//! numbers every reply (state only the worker holds), is saved from one listener and
//! loaded into another, through our frontend and through rust-vmm's `vhost` crate; every
//! damaged or out-of-order transfer is refused and leaves the device and its workers as
//! they were.

#[path = "support/backend.rs"]
mod backend;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backend::TempDir;
use vhost_user_sync::backend::state_stream;
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendError, FrontendMemory};
use vhost_user_sync::prelude::*;
use vhost_user_sync::protocol::ProtocolFeatures;

const T: Duration = Duration::from_secs(10);

/// Counts the requests it has served; the count is its config space (le64) and its
/// saved state (a tag and the count).
struct Counter {
    count: Arc<AtomicU64>,
}

/// Writes a ticket number into each request's buffer: the next one is data-path state,
/// saved and loaded by the worker itself.
struct CounterWorker {
    count: Arc<AtomicU64>,
    next_ticket: u64,
}

const TICKET_TAG: &[u8; 8] = b"tickets1";

const TAG: &[u8; 8] = b"counter1";

impl Device for Counter {
    type Worker = CounterWorker;
    fn info(&self) -> DeviceInfo {
        DeviceInfo::new("counter", 0xfffd, 1)
            .with_config_size(8)
            .with_device_state()
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let bytes = self.count.load(Ordering::Relaxed).to_le_bytes();
        let at = offset as usize;
        data.copy_from_slice(&bytes[at..at + data.len()]);
    }
    fn create_worker(&mut self, _: usize) -> std::io::Result<CounterWorker> {
        Ok(CounterWorker {
            count: self.count.clone(),
            next_ticket: 1,
        })
    }
    fn save_state(&mut self) -> Result<Vec<u8>, DeviceError> {
        let mut s = TAG.to_vec();
        s.extend_from_slice(&self.count.load(Ordering::Relaxed).to_le_bytes());
        Ok(s)
    }
    fn load_state(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        let (tag, count) = state
            .split_at_checked(8)
            .ok_or_else(|| DeviceError::Other(format!("counter state of {} bytes", state.len())))?;
        if tag != TAG || count.len() != 8 {
            return Err(DeviceError::Other("not a counter state".into()));
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(count);
        self.count.store(u64::from_le_bytes(b), Ordering::Relaxed);
        Ok(())
    }
}

impl QueueWorker for CounterWorker {
    fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
        while let Some(chain) = queue.pop() {
            self.count.fetch_add(1, Ordering::Relaxed);
            let n = chain
                .writer(queue.mem())
                .write(&self.next_ticket.to_le_bytes())?;
            self.next_ticket += 1;
            queue.add_used(&chain, n as u32)?;
        }
        Ok(())
    }

    fn save_state(&mut self) -> Result<Vec<u8>, DeviceError> {
        Ok([&TICKET_TAG[..], &self.next_ticket.to_le_bytes()].concat())
    }

    fn check_state(&self, state: &[u8]) -> Result<(), DeviceError> {
        match state.split_at_checked(8) {
            Some((tag, next)) if tag == TICKET_TAG && next.len() == 8 => Ok(()),
            _ => Err(DeviceError::Other(format!(
                "not a ticket state ({} bytes)",
                state.len()
            ))),
        }
    }

    fn load_state(&mut self, state: &[u8]) {
        if let Some(next) = state.get(8..16).and_then(|b| b.try_into().ok()) {
            self.next_ticket = u64::from_le_bytes(next);
        }
    }
}

/// A listener serving a fresh counter (count 0) per connection, on a thread.
struct Backend {
    path: std::path::PathBuf,
    shutdown: vhost_user_sync::backend::Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    fn start(dir: &TempDir, name: &str) -> Backend {
        let path = dir.path().join(name);
        let mut l = VhostUserListener::new(path.to_str().unwrap(), None).unwrap();
        let shutdown = l.shutdown_handle();
        let thread = std::thread::spawn(move || {
            l.serve(|| Counter {
                count: Arc::default(),
            })
            .unwrap()
        });
        Backend {
            path,
            shutdown,
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A frontend with DEVICE_STATE negotiated, memory shared and queue 0 running.
struct Session {
    fe: Frontend,
    mem: FrontendMemory,
    q: DriverQueue,
}

impl Session {
    fn open(b: &Backend) -> Session {
        let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
        let mut fe = Frontend::connect(&b.path).unwrap();
        let (_, protocol) = fe.negotiate(u64::MAX, u64::MAX).unwrap();
        assert!(protocol.contains(ProtocolFeatures::DEVICE_STATE));
        fe.set_mem_table(&mem).unwrap();
        let q = DriverQueue::new(&mem, 0, 16).unwrap();
        Session { fe, mem, q }
    }

    fn start(&mut self) {
        self.q.attach(&mut self.fe, &self.mem).unwrap();
    }

    fn count(&mut self) -> u64 {
        u64::from_le_bytes(self.fe.get_config(0, 8).unwrap().try_into().unwrap())
    }

    /// One request; returns the ticket the worker wrote into it.
    fn request(&mut self) -> u64 {
        let buf = self.mem.alloc(8, 8).unwrap();
        self.q.add(self.mem.table(), &[(buf, 8, true)]).unwrap();
        self.q.kick(self.mem.table()).unwrap();
        let used = self.q.wait_used(self.mem.table(), T).unwrap();
        assert_eq!(used.len, 8);
        let mut ticket = [0u8; 8];
        self.mem.table().read(buf, &mut ticket).unwrap();
        u64::from_le_bytes(ticket)
    }

    fn stop(&mut self) {
        self.fe.get_vring_base(0).unwrap();
    }
}

#[test]
fn the_count_moves_from_one_backend_to_another() {
    let dir = TempDir::new("device-state");
    let (a, b) = (
        Backend::start(&dir, "a.sock"),
        Backend::start(&dir, "b.sock"),
    );
    let mut src = Session::open(&a);
    src.start();
    let tickets: Vec<u64> = (0..3).map(|_| src.request()).collect();
    assert_eq!(tickets, [1, 2, 3]);
    assert_eq!(src.count(), 3);
    // Saving needs the stopped phase: a running ring refuses it.
    assert!(src.fe.save_device_state().is_err());
    src.stop();
    let state = src.fe.save_device_state().unwrap();
    let parts = state_stream::decode(&state).unwrap();
    assert_eq!(parts.device, [&TAG[..], &3u64.to_le_bytes()].concat());
    assert_eq!(
        parts.workers,
        [[&TICKET_TAG[..], &4u64.to_le_bytes()].concat()],
        "the worker's section"
    );

    let mut dst = Session::open(&b);
    assert_eq!(dst.count(), 0);
    dst.fe.load_device_state(&state).unwrap();
    assert_eq!(dst.count(), 3, "the count arrived");
    dst.start();
    assert_eq!(dst.request(), 4, "the worker's numbering goes on");
    assert_eq!(dst.count(), 4, "and so does the count");
}

/// A state whose worker section the worker refuses, or with a section for a worker the
/// device does not run, is refused whole: the device's own part is not loaded either.
#[test]
fn a_worker_refusing_its_part_leaves_the_device_as_it_was() {
    let dir = TempDir::new("device-state-worker");
    let b = Backend::start(&dir, "b.sock");
    let mut s = Session::open(&b);
    let device = [&TAG[..], &7u64.to_le_bytes()].concat();
    let tickets = [&TICKET_TAG[..], &50u64.to_le_bytes()].concat();
    nack(s.fe.load_device_state(&state_stream::encode_parts(
        &device,
        &[b"tickets?".to_vec()],
    )));
    nack(s.fe.load_device_state(&state_stream::encode_parts(
        &device,
        &[tickets.clone(), tickets.clone()],
    )));
    assert_eq!(s.count(), 0, "the device's part was not loaded");
    s.fe.load_device_state(&state_stream::encode_parts(&device, &[tickets]))
        .unwrap();
    assert_eq!(s.count(), 7);
    s.start();
    assert_eq!(s.request(), 50);
    // A state with no worker section (a device whose workers keep nothing, or an older
    // build) leaves the workers' own state as it is.
    s.stop();
    s.fe.load_device_state(&state_stream::encode(&device))
        .unwrap();
    s.start();
    assert_eq!(s.request(), 51);
}

/// The backend refused a loaded state at CHECK_DEVICE_STATE.
fn nack(r: Result<(), FrontendError>) {
    assert!(
        matches!(
            r,
            Err(FrontendError::Nack {
                request: "CHECK_DEVICE_STATE",
                ..
            })
        ),
        "{r:?}"
    )
}

#[test]
fn damaged_and_out_of_order_transfers_are_refused_and_change_nothing() {
    let dir = TempDir::new("device-state-bad");
    let b = Backend::start(&dir, "b.sock");
    let mut s = Session::open(&b);
    let good = state_stream::encode(&[&TAG[..], &9u64.to_le_bytes()].concat());
    // Truncated at every length, one bit flipped, bytes after the end, a foreign
    // payload inside a good envelope, a length beyond the limit.
    for cut in [0, 5, 12, good.len() - 1] {
        nack(s.fe.load_device_state(&good[..cut]));
    }
    let mut flipped = good.clone();
    flipped[14] ^= 0x10;
    nack(s.fe.load_device_state(&flipped));
    let mut long = good.clone();
    long.push(0);
    nack(s.fe.load_device_state(&long));
    nack(s.fe.load_device_state(&state_stream::encode(b"not a counter")));
    let mut huge = good.clone();
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    nack(s.fe.load_device_state(&huge));
    assert_eq!(s.count(), 0, "nothing refused changed the device");
    // CHECK without a transfer is refused; the good state then loads.
    assert!(s.fe.check_device_state().is_err());
    s.fe.load_device_state(&good).unwrap();
    assert_eq!(s.count(), 9);
    // A running ring refuses a load too.
    s.start();
    assert!(s.fe.load_device_state(&good).is_err());
}

#[test]
fn without_the_feature_negotiated_the_requests_are_refused() {
    let dir = TempDir::new("device-state-off");
    let b = Backend::start(&dir, "b.sock");
    let mut fe = Frontend::connect(&b.path).unwrap();
    fe.negotiate(u64::MAX, ProtocolFeatures::REPLY_ACK.bits())
        .unwrap();
    assert!(fe.save_device_state().is_err());
    assert!(fe.check_device_state().is_err());
}

#[test]
fn the_vhost_crate_saves_and_loads_the_same_way() {
    use std::io::{Read, Write};
    use vhost::vhost_user::message::{
        VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags,
        VhostUserProtocolFeatures as Proto,
    };
    use vhost::vhost_user::{Frontend as VhostFrontend, VhostUserFrontend};
    use vhost::VhostBackend;

    let dir = TempDir::new("device-state-vhost");
    let (a, b) = (
        Backend::start(&dir, "a.sock"),
        Backend::start(&dir, "b.sock"),
    );
    // Our frontend counts to 5 on a, and stops the ring.
    let mut src = Session::open(&a);
    src.start();
    for _ in 0..5 {
        src.request();
    }
    src.stop();
    let state = src.fe.save_device_state().unwrap();
    // The vhost crate loads it into b, reads the count back and saves it again.
    let vhost_session = |path: &std::path::Path| {
        let fe = VhostFrontend::connect(path, 1).unwrap();
        fe.set_owner().unwrap();
        let features = fe.get_features().unwrap();
        fe.set_features(features).unwrap();
        let mut fe = fe;
        let protocol = fe.get_protocol_features().unwrap();
        assert!(protocol.contains(Proto::DEVICE_STATE));
        fe.set_protocol_features(protocol).unwrap();
        fe
    };
    // Load with the crate into b.
    let mut fe_b = vhost_session(&b.path);
    let (rd, wr) = nix::unistd::pipe().unwrap();
    let back = fe_b
        .set_device_state_fd(
            VhostTransferStateDirection::LOAD,
            VhostTransferStatePhase::STOPPED,
            rd,
        )
        .unwrap();
    assert!(back.is_none(), "no fd comes back");
    std::fs::File::from(wr).write_all(&state).unwrap();
    fe_b.check_device_state().unwrap();
    let (_, count) = fe_b
        .get_config(0, 8, VhostUserConfigFlags::empty(), &[0; 8])
        .unwrap();
    assert_eq!(count, 5u64.to_le_bytes());
    // Saved by the crate from b, the same state comes out.
    let (rd, wr) = nix::unistd::pipe().unwrap();
    fe_b.set_device_state_fd(
        VhostTransferStateDirection::SAVE,
        VhostTransferStatePhase::STOPPED,
        wr,
    )
    .unwrap();
    let mut saved = Vec::new();
    std::fs::File::from(rd).read_to_end(&mut saved).unwrap();
    fe_b.check_device_state().unwrap();
    assert_eq!(saved, state);
}
