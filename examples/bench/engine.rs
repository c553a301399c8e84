//! The driver loop shared by the workloads: reap what is used, post new requests, kick
//! once per ring and batch, and sleep on the call eventfds when nothing came back.

use std::sync::atomic::{fence, Ordering};
use std::time::Instant;

use vhost_user_sync::memory::MemoryTable;

use crate::device::Device;
use crate::error::Result;
use crate::report::Json;
use crate::ring::{wait_calls, Completion, Ring};
use crate::stats::Meter;

/// What a workload does with its rings.
pub trait Workload {
    /// Posts requests on ring `r` while the workload wants more in flight and there is
    /// room; returns how many were posted (the engine kicks when there are any).
    fn refill(&mut self, r: usize, ring: &mut Ring, mem: &MemoryTable) -> Result<usize>;

    /// Takes one completion from ring `r`, counting it in `meter`.
    fn complete(
        &mut self,
        r: usize,
        c: Completion,
        mem: &MemoryTable,
        meter: &mut Meter,
    ) -> Result<()>;
}

/// Runs `w` on `dev` until `meter`'s runtime is over; returns driver counters (kicks,
/// sleeps) for the report.
pub fn run(dev: &mut Device, w: &mut impl Workload, meter: &mut Meter) -> Result<Json> {
    let mem = dev.mem.table();
    let rings = &mut dev.rings;
    let mut batches = 0u64;
    loop {
        let now = Instant::now();
        if !meter.running(now) {
            break;
        }
        let mut reaped = 0;
        for (i, ring) in rings.iter_mut().enumerate() {
            reaped += ring.reap(mem, now, |c| w.complete(i, c, mem, meter))?;
        }
        for (i, ring) in rings.iter_mut().enumerate() {
            if w.refill(i, ring, mem)? > 0 {
                ring.kick(mem)?;
                batches += 1;
            }
        }
        if reaped == 0 {
            // Our used_event store (made while reaping) must be visible before the used
            // index is looked at again, or a call the backend skipped is never made up.
            fence(Ordering::SeqCst);
            let mut any = false;
            for ring in rings.iter() {
                any |= ring.has_used(mem)?;
            }
            if !any {
                wait_calls(rings.iter().map(Ring::call_fd), meter.sleep_budget(now))?;
                meter.waits += 1;
            }
        }
    }
    let ops: u64 = meter.streams.iter().map(|s| s.ops).sum();
    let kicks: u64 = rings.iter().map(Ring::kicks).sum();
    let mut j = Json::obj();
    j.set("kicks", kicks)
        .set("post_batches", batches)
        .set("sleeps", meter.waits)
        .set("kicks_per_op", kicks as f64 / ops.max(1) as f64)
        .set("sleeps_per_op", meter.waits as f64 / ops.max(1) as f64);
    Ok(j)
}
