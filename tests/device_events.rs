//! A device that fills its queue from an fd of its own (`QueueWorker::handle_event`
//! and `Queues::with_queue`, as the net device's tap does) under EVENT_IDX, with a
//! driver that kicks only when the device's `avail_event` asks for it, as Linux does.

#[path = "support/backend.rs"]
mod backend;

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backend::TempDir;
use vhost_user_sync::device::{
    Device, DeviceError, DeviceInfo, FdRegistry, Queue, QueueWorker, Queues,
};
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
use vhost_user_sync::protocol::virtio;
use vhost_user_sync::VhostUserListener;

const T: Duration = Duration::from_secs(10);
const QUEUE_SIZE: u16 = 8;

/// Puts each datagram that arrives on its socket into one buffer of queue 0; a
/// datagram that finds no buffer waits for the next one. Records the driver's status
/// bytes (SET_STATUS).
struct Feed {
    sock: UnixDatagram,
    statuses: Arc<Mutex<Vec<u8>>>,
}

struct FeedWorker {
    sock: UnixDatagram,
    waiting: Option<Vec<u8>>,
}

impl Device for Feed {
    type Worker = FeedWorker;
    fn info(&self) -> DeviceInfo {
        DeviceInfo::new("feed", 4, 1)
    }
    fn set_status(&mut self, status: u8) {
        self.statuses.lock().unwrap().push(status);
    }
    fn create_worker(&mut self, _: usize) -> io::Result<FeedWorker> {
        Ok(FeedWorker {
            sock: self.sock.try_clone()?,
            waiting: None,
        })
    }
}

impl FeedWorker {
    fn deliver(&mut self, queue: &mut Queue<'_>) {
        loop {
            let msg = match self.waiting.take() {
                Some(m) => m,
                None => {
                    let mut buf = [0u8; 64];
                    match self.sock.recv(&mut buf) {
                        Ok(n) => buf[..n].to_vec(),
                        Err(_) => return,
                    }
                }
            };
            let Some(chain) = queue.pop() else {
                self.waiting = Some(msg);
                return;
            };
            let mut w = chain.writer(queue.mem());
            w.write_all(&msg).unwrap();
            let n = w.written() as u32;
            queue.add_used(&chain, n).unwrap();
        }
    }
}

impl QueueWorker for FeedWorker {
    fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
        self.deliver(queue);
        Ok(())
    }
    fn register_fds(&mut self, registry: &mut FdRegistry<'_>) -> io::Result<()> {
        registry.register_readable(self.sock.as_raw_fd(), 0)
    }
    fn handle_event(&mut self, _token: usize, queues: &mut Queues<'_>) -> Result<(), DeviceError> {
        queues.with_queue(0, |q| self.deliver(q));
        Ok(())
    }
}

/// The device emptied the ring in a device event, with data left over. The driver
/// then adds a buffer and kicks only if `avail_event` lies in what it just added
/// (Linux's `vring_need_event`): the device must have moved `avail_event` up to
/// what it took, or must notice the new buffer itself.
#[test]
fn buffers_added_after_a_device_event_emptied_the_ring_are_used() {
    let dir = TempDir::new("events");
    let path = dir.path().join("s.sock");
    let (dev_end, host_end) = UnixDatagram::pair().unwrap();
    dev_end.set_nonblocking(true).unwrap();
    let mut l = VhostUserListener::new(path.to_str().unwrap(), None).unwrap();
    let shutdown = l.shutdown_handle();
    let t = std::thread::spawn(move || {
        l.serve(|| Feed {
            sock: dev_end.try_clone().unwrap(),
            statuses: Arc::default(),
        })
        .unwrap()
    });

    let mut fe = Frontend::connect(&path).unwrap();
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
    fe.negotiate(u64::MAX, u64::MAX).unwrap();
    assert_ne!(fe.features() & virtio::RING_EVENT_IDX, 0);
    fe.set_mem_table(&mem).unwrap();
    let mut q = DriverQueue::new(&mem, 0, QUEUE_SIZE).unwrap();
    q.attach(&mut fe, &mem).unwrap();

    // The ring was started and processed once (attach returns after the worker
    // enabled it): avail_event is 0. One buffer, not kicked, so that only the
    // device event takes it.
    let b0 = mem.alloc(64, 8).unwrap();
    q.add(mem.table(), &[(b0, 64, true)]).unwrap();
    // Two datagrams: the first takes the buffer, the second waits.
    host_end.send(b"first").unwrap();
    host_end.send(b"second").unwrap();
    assert_eq!(q.wait_used(mem.table(), T).unwrap().len, 5);

    let old = q.avail_idx();
    let b1 = mem.alloc(64, 8).unwrap();
    q.add(mem.table(), &[(b1, 64, true)]).unwrap();
    let new = q.avail_idx();
    std::sync::atomic::fence(Ordering::SeqCst);
    let avail_event_gpa = q.used_gpa() + 4 + 8 * u64::from(QUEUE_SIZE);
    let event: u16 = mem
        .table()
        .load(avail_event_gpa, Ordering::Acquire)
        .unwrap();
    if new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old) {
        q.kick_now().unwrap();
    }
    let used = q
        .wait_used(mem.table(), T)
        .expect("the waiting datagram never reached the new buffer");
    assert_eq!(used.len, 6);

    drop(fe);
    shutdown.trigger();
    t.join().unwrap();
}

/// SET_STATUS reaches the device in order; GET_STATUS answers the last one.
#[test]
fn the_device_sees_every_status_the_driver_sets() {
    let dir = TempDir::new("status");
    let path = dir.path().join("s.sock");
    let (dev_end, _host_end) = UnixDatagram::pair().unwrap();
    let statuses: Arc<Mutex<Vec<u8>>> = Arc::default();
    let mut l = VhostUserListener::new(path.to_str().unwrap(), None).unwrap();
    let shutdown = l.shutdown_handle();
    let seen = statuses.clone();
    let t = std::thread::spawn(move || {
        l.serve(|| Feed {
            sock: dev_end.try_clone().unwrap(),
            statuses: seen.clone(),
        })
        .unwrap()
    });
    let mut fe = Frontend::connect(&path).unwrap();
    fe.negotiate(u64::MAX, u64::MAX).unwrap();
    for s in [1u8, 3, 11, 15, 0] {
        fe.set_status(s).unwrap();
        assert_eq!(fe.get_status().unwrap(), s);
    }
    // Requests are handled in order: each GET_STATUS came after the device saw the
    // SET_STATUS before it.
    assert_eq!(*statuses.lock().unwrap(), vec![1, 3, 11, 15, 0]);
    drop(fe);
    shutdown.trigger();
    t.join().unwrap();
}
