//! A device that panics (a bug in device code) takes down only its own connection: the
//! framework logs it with the device's name, the listener accepts again, and the other
//! devices of the process go on.

use std::path::Path;
use std::sync::Mutex;

use vhost_user_sync::frontend::{DriverQueue, FrontendMemory};

use crate::hostile::{class, expect_closed, negotiated, wait_snapshot, Healthy, Proc, Snapshot, T};

pub const NAMES: &[(&str, &str)] = &[
    (
        "host-panicky::device_panic_closes_only_its_connection",
        class::PANIC,
    ),
    (
        "host-fragile::failed_worker_rebuild_closes_only_its_connection",
        class::REBUILD,
    ),
];

/// RESET_DEVICE whose worker rebuild fails: the frontend gets its NACK, the session
/// (left without workers) is closed with the reason logged, and the listener and the
/// other devices go on.
pub fn run_fragile(proc: &Mutex<Proc>, dir: &Path, rng: &Mutex<Healthy>, net: &Mutex<Healthy>) {
    let mut p = proc.lock().unwrap_or_else(|e| e.into_inner());
    let pid = p.pid();
    let socket = dir.join("fragile.sock");
    let pump = || {
        rng.lock().unwrap_or_else(|e| e.into_inner()).pump();
        net.lock().unwrap_or_else(|e| e.into_inner()).pump();
    };
    pump();
    let base = p.idle.clone().unwrap_or_else(|| Snapshot::take(pid));
    p.drain_log();
    for round in 0..2 {
        let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
        let mut fe = negotiated(&socket);
        fe.set_mem_table(&mem).expect("SET_MEM_TABLE");
        let mut q = DriverQueue::new(&mem, 0, 16).expect("queue");
        q.attach(&mut fe, &mem).expect("attach");
        assert!(
            fe.reset_device().is_err(),
            "round {round}: RESET_DEVICE acked without workers"
        );
        pump();
        expect_closed(&fe);
        let line = p.wait_log(|l| l.contains("fragile: connection closed"), T);
        assert!(
            line.contains("workers could not be started"),
            "round {round}: the close does not say why: {line}"
        );
        drop(fe);
        wait_snapshot(pid, &base, T, "after a failed rebuild");
    }
    p.assert_alive();
}

pub fn run(proc: &Mutex<Proc>, dir: &Path, rng: &Mutex<Healthy>, net: &Mutex<Healthy>) {
    let mut p = proc.lock().unwrap_or_else(|e| e.into_inner());
    let pid = p.pid();
    let socket = dir.join("panicky.sock");
    let pump = || {
        rng.lock().unwrap_or_else(|e| e.into_inner()).pump();
        net.lock().unwrap_or_else(|e| e.into_inner()).pump();
    };
    pump();
    let base = p.idle.clone().unwrap_or_else(|| Snapshot::take(pid));
    p.drain_log();
    for round in 0..3 {
        let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
        let mut fe = negotiated(&socket);
        fe.set_mem_table(&mem).expect("SET_MEM_TABLE");
        let mut q = DriverQueue::new(&mem, 0, 16).expect("queue");
        q.attach(&mut fe, &mem).expect("attach");
        let buf = mem.alloc(64, 8).expect("alloc");
        q.add(mem.table(), &[(buf, 64, true)]).expect("add");
        q.kick(mem.table()).expect("kick");
        // The other devices carry traffic while this one fails.
        pump();
        expect_closed(&fe);
        let line = p.wait_log(|l| l.contains("panicked"), T);
        assert!(
            line.contains("panicky"),
            "round {round}: the panic is logged without the device's name: {line}"
        );
        p.wait_log(|l| l.contains("panicky: connection closed"), T);
        pump();
        drop(fe);
        wait_snapshot(pid, &base, T, "after a device panic");
    }
    p.assert_alive();
}
