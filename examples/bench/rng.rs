//! The `rng` workload: keep `iodepth` device-writable buffers of `bs` bytes posted on
//! queue 0 and count the entropy that comes back.

use vhost_user_sync::memory::MemoryTable;

use crate::device::{ring_bytes, Device, DeviceOpts};
use crate::engine::Workload;
use crate::error::{bail, Context, Result};
use crate::report::Json;
use crate::ring::{Completion, Ring};
use crate::scale::Probe;
use crate::stats::{Meter, Stream, Units};
use crate::units::parse_size;

/// Options of the rng workload.
#[derive(clap::Args, Debug, Clone)]
pub struct RngArgs {
    /// Bytes per request (suffixes k, m).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub bs: u64,
    /// Requests kept in flight.
    #[arg(long, default_value_t = 32)]
    pub iodepth: u16,
}

/// Connects and sets up queue 0 with room for the buffers.
pub fn open(opts: &DeviceOpts, a: &RngArgs) -> Result<Device> {
    if a.bs == 0 || a.bs > u64::from(u32::MAX) {
        bail!("--bs must be between 1 and 4 GiB - 1");
    }
    let mem = ring_bytes(1, opts.queue_size) + u64::from(a.iodepth) * a.bs.next_multiple_of(64);
    let mut dev = Device::open(opts, 0, mem + (1 << 20))?;
    dev.add_ring(0)?;
    Ok(dev)
}

/// The rng driver: one buffer per slot.
struct Rng {
    bufs: Vec<u64>,
    free: Vec<u32>,
    bs: u32,
}

impl Workload for Rng {
    fn refill(&mut self, _r: usize, ring: &mut Ring, mem: &MemoryTable) -> Result<usize> {
        let mut n = 0;
        while ring.has_room(1) {
            let Some(slot) = self.free.pop() else { break };
            ring.submit(
                mem,
                slot,
                &[(self.bufs[slot as usize], self.bs, true)],
                None,
            )?;
            n += 1;
        }
        Ok(n)
    }

    fn complete(
        &mut self,
        _r: usize,
        c: Completion,
        _mem: &MemoryTable,
        meter: &mut Meter,
    ) -> Result<()> {
        if c.len > self.bs {
            bail!(
                "the backend wrote {} bytes into a {}-byte buffer",
                c.len,
                self.bs
            );
        }
        meter.streams[0].complete(c.len.into(), c.latency_ns);
        self.free.push(c.slot);
        Ok(())
    }
}

/// Runs the workload on an opened device.
pub fn run(
    dev: &mut Device,
    a: &RngArgs,
    runtime: std::time::Duration,
    progress: bool,
) -> Result<(Meter, Json, Json)> {
    let depth = a.iodepth.clamp(1, dev.queue_size());
    let bufs = (0..depth)
        .map(|_| dev.mem.alloc(a.bs, 64))
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("allocating request buffers")?;
    let mut w = Rng {
        bufs,
        free: (0..u32::from(depth)).rev().collect(),
        bs: a.bs as u32,
    };
    let streams = vec![Stream::new("rng", Units::Requests, true)];
    let mut meter = Meter::new("rng", streams, runtime, progress);
    let driver = crate::engine::run(dev, &mut w, &mut meter)?;
    let mut params = Json::obj();
    params.set("bs", a.bs).set("iodepth", depth);
    Ok((meter, params, driver))
}

/// One small request per device, for `--scale`.
pub fn probe(dev: &mut Device, a: &RngArgs) -> Result<Probe> {
    let buf = dev
        .mem
        .alloc(a.bs, 64)
        .context("allocating a probe buffer")?;
    Ok(Probe {
        ring: 0,
        bufs: vec![(buf, a.bs as u32, true)],
        table: None,
        status: None,
    })
}
