//! Devices with bugs, in the multi-device host: one that panics, one whose workers
//! cannot be rebuilt after a reset, one whose worker blocks in device code. Each takes
//! down only its own connection: the framework logs why with the device's name, the
//! listener accepts again, and the other devices of the process go on.

use std::path::Path;
use std::sync::Mutex;

use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
use vhost_user_sync::protocol::FrontendRequest as R;

use crate::hostile::{
    class, expect_closed, negotiated, state_body, wait_same_shape, Healthy, Proc, Snapshot, PLAIN,
    T,
};

pub const NAMES: &[(&str, &str)] = &[
    (
        "host-panicky::device_panic_closes_only_its_connection",
        class::PANIC,
    ),
    (
        "host-fragile::failed_worker_rebuild_closes_only_its_connection",
        class::REBUILD,
    ),
    (
        "host-stuck::stuck_device_ends_its_own_connection",
        class::STUCK,
    ),
];

/// The host with a healthy rng and net session carrying traffic beside the case.
struct Scene<'a> {
    proc: std::sync::MutexGuard<'a, Proc>,
    rng: &'a Mutex<Healthy>,
    net: &'a Mutex<Healthy>,
    /// What the process holds before the case.
    base: Snapshot,
}

impl<'a> Scene<'a> {
    fn enter(proc: &'a Mutex<Proc>, rng: &'a Mutex<Healthy>, net: &'a Mutex<Healthy>) -> Self {
        let p = proc.lock().unwrap_or_else(|e| e.into_inner());
        let base = p.idle.clone().unwrap_or_else(|| Snapshot::take(p.pid()));
        let scene = Scene {
            proc: p,
            rng,
            net,
            base,
        };
        scene.pump();
        scene.proc.drain_log();
        scene
    }

    /// One round of traffic on the other devices.
    fn pump(&self) {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).pump();
        self.net.lock().unwrap_or_else(|e| e.into_inner()).pump();
    }

    /// Waits until the process holds what it held before the case: the same fds by
    /// kind, threads and maps. Fd numbers may differ: an fd closed late (by a worker
    /// released after its connection ended) and one opened meanwhile can trade numbers.
    fn settled(&self, what: &str) {
        wait_same_shape(self.proc.pid(), &self.base, T, what);
    }
}

/// A connection to `socket` with memory and ring 0 started, and one 64-byte
/// device-writable buffer posted (not kicked).
fn ring_with_a_buffer(socket: &Path) -> (Frontend, FrontendMemory, DriverQueue) {
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
    let mut fe = negotiated(socket);
    fe.set_mem_table(&mem).expect("SET_MEM_TABLE");
    let mut q = DriverQueue::new(&mem, 0, 16).expect("queue");
    q.attach(&mut fe, &mem).expect("attach");
    let buf = mem.alloc(64, 8).expect("alloc");
    q.add(mem.table(), &[(buf, 64, true)]).expect("add");
    (fe, mem, q)
}

/// A device that panics on its first chain, three times in a row.
pub fn run(proc: &Mutex<Proc>, dir: &Path, rng: &Mutex<Healthy>, net: &Mutex<Healthy>) {
    let mut scene = Scene::enter(proc, rng, net);
    let socket = dir.join("panicky.sock");
    for round in 0..3 {
        let (fe, mem, mut q) = ring_with_a_buffer(&socket);
        q.kick(mem.table()).expect("kick");
        // The other devices carry traffic while this one fails.
        scene.pump();
        expect_closed(&fe);
        let line = scene.proc.wait_log(|l| l.contains("panicked"), T);
        assert!(
            line.contains("panicky"),
            "round {round}: the panic is logged without the device's name: {line}"
        );
        scene
            .proc
            .wait_log(|l| l.contains("panicky: connection closed"), T);
        scene.pump();
        drop(fe);
        scene.settled("after a device panic");
    }
    scene.proc.assert_alive();
}

/// RESET_DEVICE whose worker rebuild fails: the frontend gets its NACK, the session
/// (left without workers) is closed with the reason logged, and the listener and the
/// other devices go on.
pub fn run_fragile(proc: &Mutex<Proc>, dir: &Path, rng: &Mutex<Healthy>, net: &Mutex<Healthy>) {
    let mut scene = Scene::enter(proc, rng, net);
    let socket = dir.join("fragile.sock");
    for round in 0..2 {
        let (mut fe, _mem, _q) = ring_with_a_buffer(&socket);
        assert!(
            fe.reset_device().is_err(),
            "round {round}: RESET_DEVICE acked without workers"
        );
        scene.pump();
        expect_closed(&fe);
        let line = scene
            .proc
            .wait_log(|l| l.contains("fragile: connection closed"), T);
        assert!(
            line.contains("workers could not be started"),
            "round {round}: the close does not say why: {line}"
        );
        drop(fe);
        scene.settled("after a failed rebuild");
    }
    scene.proc.assert_alive();
}

/// A worker blocked in device code: the request that waits for it (GET_VRING_BASE) ends
/// the connection within the host's worker timeout, the listener serves the next
/// frontend while the old worker is still blocked, the other devices carry traffic, and
/// once released the old worker ends and everything it held is gone.
pub fn run_stuck(proc: &Mutex<Proc>, dir: &Path, rng: &Mutex<Healthy>, net: &Mutex<Healthy>) {
    let mut scene = Scene::enter(proc, rng, net);
    let socket = dir.join("stuck.sock");
    let (mut fe, _mem, mut q) = ring_with_a_buffer(&socket);
    q.kick_now().expect("kick");
    // GET_VRING_BASE waits for the worker, which never answers: no reply comes, the
    // connection is closed.
    fe.send_raw(R::GET_VRING_BASE.number(), PLAIN, &state_body(0, 0), &[])
        .expect("send");
    expect_closed(&fe);
    let line = scene
        .proc
        .wait_log(|l| l.contains("stuck: connection closed"), T);
    assert!(
        line.contains("did not stop a ring within"),
        "the close does not say why: {line}"
    );
    scene.pump();
    // The listener accepts again, with the old worker still blocked.
    let mut again = negotiated(&socket);
    again.get_features().expect("a new frontend is served");
    drop(again);
    scene.pump();
    // Release the old worker: it finishes its chain on the closed connection and ends.
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(crate::host::stuck_fifo(dir))
        .expect("open the FIFO");
    std::io::Write::write_all(&mut w, b"x").expect("release");
    drop(w);
    scene.proc.wait_log(|l| l.contains("stuck: released"), T);
    drop(fe);
    drop(negotiated(&socket));
    scene.settled("after the stuck worker was released");
    scene.proc.assert_alive();
}
