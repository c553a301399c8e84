//! The `blk` workload, fio-like: sequential or random reads or writes of `bs` bytes
//! with `iodepth` requests in flight per queue over the first `size` bytes of the disk.
//!
//! A virtio-blk request is three buffers: a 16-byte header {type u32 (0 IN, 1 OUT),
//! reserved u32, sector u64} the device reads, the data, and a status byte the device
//! writes (0 OK, 1 IOERR, 2 UNSUPP). The capacity (u64, 512-byte sectors) is at offset
//! 0 of the config space.

use clap::ValueEnum;
use vhost_user_sync::memory::MemoryTable;

use crate::device::{ring_bytes, Device, DeviceOpts};
use crate::engine::Workload;
use crate::error::{bail, Context, Result};
use crate::report::Json;
use crate::ring::{Completion, Ring};
use crate::scale::Probe;
use crate::stats::{Meter, Stream, Units};
use crate::units::parse_size;

/// VIRTIO_BLK_F_SEG_MAX.
const F_SEG_MAX: u64 = 1 << 2;
/// VIRTIO_BLK_F_RO.
const F_RO: u64 = 1 << 5;
/// VIRTIO_BLK_F_BLK_SIZE.
const F_BLK_SIZE: u64 = 1 << 6;
/// VIRTIO_BLK_F_FLUSH: asked for as a Linux guest does, so that the device runs with a
/// writeback cache (without it the spec makes every write durable before it completes).
const F_FLUSH: u64 = 1 << 9;
/// VIRTIO_BLK_F_MQ.
const F_MQ: u64 = 1 << 12;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const SECTOR: u64 = 512;
/// Per-request metadata: header at 0, indirect table (3 entries) at 16, status at 64.
const META: u64 = 128;

/// The access pattern, as fio names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
}

impl Rw {
    fn is_write(self) -> bool {
        matches!(self, Rw::Write | Rw::Randwrite)
    }

    fn is_random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite)
    }

    fn name(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::Randread => "randread",
            Rw::Randwrite => "randwrite",
        }
    }
}

/// Options of the blk workload.
#[derive(clap::Args, Debug, Clone)]
pub struct BlkArgs {
    /// Access pattern.
    #[arg(long, value_enum, default_value = "randread")]
    pub rw: Rw,
    /// Bytes per request, a multiple of 512 (suffixes k, m).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub bs: u64,
    /// Requests kept in flight per queue.
    #[arg(long, default_value_t = 1)]
    pub iodepth: u16,
    /// Bytes of the disk to use, from its start [default: the whole disk].
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Queues to drive (more than one needs VIRTIO_BLK_F_MQ).
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
}

/// Connects, reads the capacity and sets up the queues.
pub fn open(opts: &DeviceOpts, a: &BlkArgs) -> Result<(Device, u64)> {
    if a.bs == 0 || !a.bs.is_multiple_of(SECTOR) || a.bs > 1 << 30 {
        bail!("--bs must be a non-zero multiple of 512 of at most 1 GiB");
    }
    if a.queues == 0 {
        bail!("--queues must be at least 1");
    }
    let slots = u64::from(a.queues) * u64::from(a.iodepth.min(opts.queue_size));
    let mem = ring_bytes(a.queues.into(), opts.queue_size)
        + slots * (a.bs.next_multiple_of(4096) + META)
        + (1 << 20);
    let mut want = F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH;
    if a.queues > 1 {
        want |= F_MQ;
    }
    let mut dev = Device::open(opts, want, mem)?;
    if a.queues > 1 && !dev.has(F_MQ) {
        bail!(
            "--queues {} needs VIRTIO_BLK_F_MQ, which the backend does not offer",
            a.queues
        );
    }
    if a.rw.is_write() && dev.has(F_RO) {
        bail!(
            "the disk is read-only (VIRTIO_BLK_F_RO) and --rw {} writes",
            a.rw.name()
        );
    }
    let cap = dev.get_config(0, 8).context("reading the capacity")?;
    let sectors = u64::from_le_bytes(
        cap.as_slice()
            .try_into()
            .context("capacity in the config space")?,
    );
    for q in 0..a.queues {
        dev.add_ring(q)?;
    }
    Ok((dev, sectors))
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    meta: u64,
    data: u64,
}

impl Slot {
    fn hdr(&self) -> u64 {
        self.meta
    }

    fn table(&self) -> u64 {
        self.meta + 16
    }

    fn status(&self) -> u64 {
        self.meta + 64
    }
}

struct Blk {
    slots: Vec<Slot>,
    /// Free slots of each ring.
    free: Vec<Vec<u32>>,
    rw: Rw,
    bs: u32,
    blocks: u64,
    next_block: u64,
    seed: u64,
}

impl Blk {
    fn next_block(&mut self) -> u64 {
        if self.rw.is_random() {
            // xorshift64*
            self.seed ^= self.seed >> 12;
            self.seed ^= self.seed << 25;
            self.seed ^= self.seed >> 27;
            self.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) % self.blocks
        } else {
            let b = self.next_block;
            self.next_block = (b + 1) % self.blocks;
            b
        }
    }
}

/// Writes a request header at `at`.
fn write_header(mem: &MemoryTable, at: u64, kind: u32, sector: u64) -> Result<()> {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write(at, &h).context("writing a request header")
}

/// The three buffers of a request.
fn buffers(s: &Slot, bs: u32, write: bool) -> [(u64, u32, bool); 3] {
    [
        (s.hdr(), 16, false),
        (s.data, bs, !write),
        (s.status(), 1, true),
    ]
}

fn check_status(mem: &MemoryTable, at: u64) -> Result<()> {
    let mut st = [0u8; 1];
    mem.read(at, &mut st).context("reading a request status")?;
    match st[0] {
        0 => Ok(()),
        1 => bail!("the backend failed a request (VIRTIO_BLK_S_IOERR)"),
        2 => bail!("the backend refused a request (VIRTIO_BLK_S_UNSUPP)"),
        0xff => bail!("the backend used a request without writing its status"),
        s => bail!("the backend answered a request with status {s}"),
    }
}

impl Workload for Blk {
    fn refill(&mut self, r: usize, ring: &mut Ring, mem: &MemoryTable) -> Result<usize> {
        let mut n = 0;
        let write = self.rw.is_write();
        while ring.has_room(3) {
            let Some(slot) = self.free[r].pop() else {
                break;
            };
            let s = self.slots[slot as usize];
            let sector = self.next_block() * u64::from(self.bs) / SECTOR;
            write_header(mem, s.hdr(), if write { T_OUT } else { T_IN }, sector)?;
            mem.write(s.status(), &[0xff])
                .context("writing a request status")?;
            ring.submit(mem, slot, &buffers(&s, self.bs, write), Some(s.table()))?;
            n += 1;
        }
        Ok(n)
    }

    fn complete(
        &mut self,
        r: usize,
        c: Completion,
        mem: &MemoryTable,
        meter: &mut Meter,
    ) -> Result<()> {
        let Some(s) = self.slots.get(c.slot as usize) else {
            bail!("completion of unknown slot {}", c.slot);
        };
        check_status(mem, s.status())?;
        meter.streams[0].complete(self.bs.into(), c.latency_ns);
        self.free[r].push(c.slot);
        Ok(())
    }
}

/// Runs the workload on a device opened by [`open`] with `sectors` of capacity.
pub fn run(
    dev: &mut Device,
    sectors: u64,
    a: &BlkArgs,
    runtime: std::time::Duration,
    progress: bool,
) -> Result<(Meter, Json, Json)> {
    let disk = sectors.saturating_mul(SECTOR);
    let size = a.size.unwrap_or(disk);
    if size > disk {
        bail!("--size {size} is beyond the disk's {disk} bytes");
    }
    let blocks = size / a.bs;
    if blocks == 0 {
        bail!("--size {size} holds no block of {} bytes", a.bs);
    }
    // Without indirect descriptors a request takes three ring entries.
    let per_req = if dev.has(vhost_user_sync::protocol::virtio::RING_INDIRECT_DESC) {
        1
    } else {
        3
    };
    let depth = a.iodepth.clamp(1, (dev.queue_size() / per_req).max(1));
    let mut slots = Vec::new();
    let mut free = Vec::new();
    let pattern: Vec<u8> = (0..a.bs).map(|i| (i % 251) as u8).collect();
    for _ in 0..dev.rings.len() {
        let mut f = Vec::new();
        for _ in 0..depth {
            let meta = dev.mem.alloc(META, 64).context("allocating requests")?;
            let data = dev.mem.alloc(a.bs, 4096).context("allocating requests")?;
            if a.rw.is_write() {
                dev.mem
                    .table()
                    .write(data, &pattern)
                    .context("filling write buffers")?;
            }
            f.push(slots.len() as u32);
            slots.push(Slot { meta, data });
        }
        f.reverse();
        free.push(f);
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut w = Blk {
        slots,
        free,
        rw: a.rw,
        bs: a.bs as u32,
        blocks,
        next_block: 0,
        seed,
    };
    let name = if a.rw.is_write() { "write" } else { "read" };
    let streams = vec![Stream::new(name, Units::Io, true)];
    let mut meter = Meter::new(format!("blk {}", a.rw.name()), streams, runtime, progress);
    let driver = crate::engine::run(dev, &mut w, &mut meter)?;
    let mut params = Json::obj();
    params
        .set("rw", a.rw.name())
        .set("bs", a.bs)
        .set("iodepth", depth)
        .set("queues", dev.rings.len())
        .set("size", size)
        .set("capacity", disk);
    Ok((meter, params, driver))
}

/// One read of `bs` at sector 0 per device, for `--scale`.
pub fn probe(dev: &mut Device, a: &BlkArgs) -> Result<Probe> {
    let meta = dev
        .mem
        .alloc(META, 64)
        .context("allocating a probe request")?;
    let data = dev
        .mem
        .alloc(a.bs, 4096)
        .context("allocating a probe request")?;
    let s = Slot { meta, data };
    write_header(dev.mem.table(), s.hdr(), T_IN, 0)?;
    dev.mem
        .table()
        .write(s.status(), &[0xff])
        .context("writing a request status")?;
    Ok(Probe {
        ring: 0,
        bufs: buffers(&s, a.bs as u32, false).to_vec(),
        table: Some(s.table()),
        status: Some(s.status()),
    })
}

/// Checks a probe's status byte (shared with [`crate::scale`]).
pub fn probe_status(mem: &MemoryTable, at: u64) -> Result<()> {
    check_status(mem, at)?;
    mem.write(at, &[0xff]).context("resetting a probe status")
}
