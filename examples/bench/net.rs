//! The `net` workload: TX of `pkt-size`-byte frames (after a 12-byte virtio_net_hdr_v1,
//! in one buffer) on queue 1, counted as the backend uses them, and RX buffers posted on
//! queue 0, counted as they come back filled. Whatever RX delivers is reported; a
//! backend that delivers nothing just gives zero.

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

/// VIRTIO_NET_F_MRG_RXBUF.
const F_MRG_RXBUF: u64 = 1 << 15;
/// virtio_net_hdr_v1.
const HDR_LEN: u64 = 12;
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;

/// Which way packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dir {
    /// Frontend to backend (queue 1).
    Tx,
    /// Backend to frontend (queue 0).
    Rx,
    /// Both at once.
    Both,
}

/// Options of the net workload.
#[derive(clap::Args, Debug, Clone)]
pub struct NetArgs {
    /// Frame bytes per packet, without the virtio header.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(14..=65_000))]
    pub pkt_size: u32,
    /// Direction.
    #[arg(long, value_enum, default_value = "tx")]
    pub dir: Dir,
    /// TX packets kept in flight [default: the queue size].
    #[arg(long)]
    pub iodepth: Option<u16>,
    /// Bytes per RX buffer, header included.
    #[arg(long, default_value = "2048", value_parser = parse_size)]
    pub rx_buf: u64,
}

/// Connects and sets up the RX and TX queues (both are always set up: backends wait
/// for a whole queue pair before they start).
pub fn open(opts: &DeviceOpts, a: &NetArgs) -> Result<Device> {
    if a.rx_buf < HDR_LEN || a.rx_buf > 1 << 20 {
        bail!("--rx-buf must be between {HDR_LEN} and 1 MiB");
    }
    let n = u64::from(opts.queue_size);
    let mem = ring_bytes(2, opts.queue_size)
        + n * (u64::from(a.pkt_size) + HDR_LEN).next_multiple_of(64)
        + n * a.rx_buf.next_multiple_of(64)
        + (1 << 20);
    let mut dev = Device::open(opts, F_MRG_RXBUF, mem)?;
    dev.add_ring(RX_QUEUE as u16)?;
    dev.add_ring(TX_QUEUE as u16)?;
    Ok(dev)
}

/// An Ethernet frame of `len` bytes: broadcast, IPv4/UDP when it fits, zero payload.
pub fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x57]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    if len >= 14 + 28 {
        let ip_len = (len - 14) as u16;
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let mut sum: u32 = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let udp = &mut f[34..42];
        udp[0..2].copy_from_slice(&1024u16.to_be_bytes());
        udp[2..4].copy_from_slice(&1025u16.to_be_bytes());
        udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    }
    f
}

struct Net {
    tx_bufs: Vec<u64>,
    tx_free: Vec<u32>,
    tx_len: u32,
    rx_bufs: Vec<u64>,
    rx_free: Vec<u32>,
    rx_len: u32,
    mrg: bool,
    /// Buffers still to come of the packet being received (MRG_RXBUF).
    rx_pending: u16,
    tx_stream: Option<usize>,
    rx_stream: Option<usize>,
}

impl Workload for Net {
    fn refill(&mut self, r: usize, ring: &mut Ring, mem: &MemoryTable) -> Result<usize> {
        let mut n = 0;
        let (free, bufs, len, write) = match r {
            RX_QUEUE if self.rx_stream.is_some() => {
                (&mut self.rx_free, &self.rx_bufs, self.rx_len, true)
            }
            TX_QUEUE if self.tx_stream.is_some() => {
                (&mut self.tx_free, &self.tx_bufs, self.tx_len, false)
            }
            _ => return Ok(0),
        };
        while ring.has_room(1) {
            let Some(slot) = free.pop() else { break };
            ring.submit(mem, slot, &[(bufs[slot as usize], len, write)], None)?;
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
        if r == TX_QUEUE {
            if let Some(s) = self.tx_stream {
                meter.streams[s].complete(u64::from(self.tx_len) - HDR_LEN, c.latency_ns);
            }
            self.tx_free.push(c.slot);
            return Ok(());
        }
        let Some(&buf) = self.rx_bufs.get(c.slot as usize) else {
            bail!("RX completion of unknown slot {}", c.slot);
        };
        if c.len > self.rx_len {
            bail!(
                "the backend wrote {} bytes into a {}-byte RX buffer",
                c.len,
                self.rx_len
            );
        }
        if let Some(s) = self.rx_stream {
            let st = &mut meter.streams[s];
            if self.rx_pending > 0 {
                self.rx_pending -= 1;
                st.bytes += u64::from(c.len);
            } else {
                if self.mrg && u64::from(c.len) >= HDR_LEN {
                    let mut nb = [0u8; 2];
                    mem.read(buf + 10, &mut nb).context("reading num_buffers")?;
                    self.rx_pending = u16::from_le_bytes(nb).saturating_sub(1);
                }
                st.complete(u64::from(c.len).saturating_sub(HDR_LEN), c.latency_ns);
            }
        }
        self.rx_free.push(c.slot);
        Ok(())
    }
}

/// Runs the workload on a device opened by [`open`].
pub fn run(
    dev: &mut Device,
    a: &NetArgs,
    runtime: std::time::Duration,
    progress: bool,
) -> Result<(Meter, Json, Json)> {
    let qs = dev.queue_size();
    let depth = a.iodepth.unwrap_or(qs).clamp(1, qs);
    let tx_len = a.pkt_size + HDR_LEN as u32;
    let f = frame(a.pkt_size as usize);
    let mut tx_bufs = Vec::new();
    for _ in 0..depth {
        let b = dev
            .mem
            .alloc(tx_len.into(), 64)
            .context("allocating TX buffers")?;
        // The header stays zero: no offloads, num_buffers unused on TX.
        dev.mem
            .table()
            .write(b + HDR_LEN, &f)
            .context("writing TX frames")?;
        tx_bufs.push(b);
    }
    let rx_bufs = (0..qs)
        .map(|_| dev.mem.alloc(a.rx_buf, 64))
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("allocating RX buffers")?;
    let mut streams = Vec::new();
    let mut slot = |name, on: bool| {
        on.then(|| {
            streams.push(Stream::new(name, Units::Packets, false));
            streams.len() - 1
        })
    };
    let tx_stream = slot("tx", a.dir != Dir::Rx);
    let rx_stream = slot("rx", a.dir != Dir::Tx);
    let mut w = Net {
        tx_free: (0..u32::from(depth)).rev().collect(),
        tx_bufs,
        tx_len,
        rx_free: (0..u32::from(qs)).rev().collect(),
        rx_bufs,
        rx_len: a.rx_buf as u32,
        mrg: dev.has(F_MRG_RXBUF),
        rx_pending: 0,
        tx_stream,
        rx_stream,
    };
    let mut meter = Meter::new("net", streams, runtime, progress);
    let driver = crate::engine::run(dev, &mut w, &mut meter)?;
    let mut params = Json::obj();
    params
        .set("dir", format!("{:?}", a.dir).to_lowercase())
        .set("pkt_size", a.pkt_size)
        .set("tx_depth", depth)
        .set("rx_buf", a.rx_buf);
    Ok((meter, params, driver))
}

/// One TX packet per device, for `--scale`.
pub fn probe(dev: &mut Device, a: &NetArgs) -> Result<Probe> {
    let len = a.pkt_size + HDR_LEN as u32;
    let b = dev
        .mem
        .alloc(len.into(), 64)
        .context("allocating a probe packet")?;
    dev.mem
        .table()
        .write(b + HDR_LEN, &frame(a.pkt_size as usize))
        .context("writing a probe packet")?;
    Ok(Probe {
        ring: TX_QUEUE,
        bufs: vec![(b, len, false)],
        table: None,
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::frame;

    #[test]
    fn frames_have_a_valid_ipv4_header_checksum() {
        let f = frame(64);
        let sum: u32 = f[14..34]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!(folded, 0xffff);
        assert_eq!(frame(14).len(), 14);
    }
}
