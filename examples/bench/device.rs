//! Setting a device up the way a VMM does: connect, negotiate from a wanted set, share
//! memfd guest memory, attach queues; and tearing it down again.

use std::path::{Path, PathBuf};

use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
use vhost_user_sync::protocol::{virtio, ProtocolFeatures};

use crate::error::{bail, Context, Result};
use crate::report::Json;
use crate::ring::Ring;

/// Transport and protocol choices shared by every workload.
#[derive(Debug, Clone)]
pub struct DeviceOpts {
    /// The backend's socket.
    pub socket: PathBuf,
    /// Ask for VIRTIO_RING_F_EVENT_IDX (used only if offered).
    pub event_idx: bool,
    /// Ask for VIRTIO_RING_F_INDIRECT_DESC (used only if offered).
    pub indirect: bool,
    /// Entries per virtqueue.
    pub queue_size: u16,
}

/// Protocol features the benchmark can use: several queues, acked requests, config
/// space reads.
const WANT_PROTOCOL: ProtocolFeatures = ProtocolFeatures::from_bits(
    ProtocolFeatures::MQ.bits()
        | ProtocolFeatures::REPLY_ACK.bits()
        | ProtocolFeatures::CONFIG.bits(),
);

/// One connected, negotiated device with its guest memory and rings.
#[derive(Debug)]
pub struct Device {
    /// The vhost-user connection.
    pub fe: Frontend,
    /// Guest memory shared with the backend.
    pub mem: FrontendMemory,
    /// Attached rings, in the order they were added.
    pub rings: Vec<Ring>,
    /// What the backend offered.
    pub offered: u64,
    /// Protocol features the backend offered.
    pub offered_protocol: ProtocolFeatures,
    /// Queues the backend supports (GET_QUEUE_NUM with MQ).
    pub queue_num: Option<u64>,
    opts: DeviceOpts,
}

impl Device {
    /// Connects to `opts.socket`, negotiates VERSION_1, PROTOCOL_FEATURES, the ring
    /// features asked for and `device_features` (device-specific bits), and shares
    /// `mem_size` bytes of guest memory.
    pub fn open(opts: &DeviceOpts, device_features: u64, mem_size: u64) -> Result<Self> {
        let where_ = opts.socket.display();
        let mem_size = mem_size.div_ceil(2 << 20) * (2 << 20);
        let mem = FrontendMemory::new(&[(0, mem_size)])
            .context(format_args!("creating {mem_size} bytes of guest memory"))?;
        let mut fe =
            Frontend::connect(&opts.socket).context(format_args!("connecting to {where_}"))?;
        fe.set_owner().context("SET_OWNER")?;
        let offered = fe.get_features().context("GET_FEATURES")?;
        let mut want = virtio::VERSION_1 | virtio::PROTOCOL_FEATURES | device_features;
        if opts.event_idx {
            want |= virtio::RING_EVENT_IDX;
        }
        if opts.indirect {
            want |= virtio::RING_INDIRECT_DESC;
        }
        let mut offered_protocol = ProtocolFeatures::EMPTY;
        if offered & virtio::PROTOCOL_FEATURES != 0 {
            offered_protocol = fe
                .get_protocol_features()
                .context("GET_PROTOCOL_FEATURES")?;
            let p = offered_protocol.intersection(WANT_PROTOCOL);
            fe.set_protocol_features(p)
                .context("SET_PROTOCOL_FEATURES")?;
        }
        if offered & virtio::VERSION_1 == 0 {
            bail!(
                "{where_}: the backend does not offer VIRTIO_F_VERSION_1 (features {offered:#x})"
            );
        }
        fe.set_features(offered & want).context("SET_FEATURES")?;
        let queue_num = if fe.protocol_features().contains(ProtocolFeatures::MQ) {
            Some(fe.get_queue_num().context("GET_QUEUE_NUM")?)
        } else {
            None
        };
        fe.set_mem_table(&mem).context("SET_MEM_TABLE")?;
        Ok(Device {
            fe,
            mem,
            rings: Vec::new(),
            offered,
            offered_protocol,
            queue_num,
            opts: opts.clone(),
        })
    }

    /// Negotiated virtio features.
    pub fn features(&self) -> u64 {
        self.fe.features()
    }

    /// Entries per virtqueue.
    pub fn queue_size(&self) -> u16 {
        self.opts.queue_size
    }

    /// Whether feature `bit` (a mask) was negotiated.
    pub fn has(&self, bit: u64) -> bool {
        self.fe.features() & bit != 0
    }

    /// Creates and attaches queue `index` (NUM, BASE, ADDR, CALL, KICK, ENABLE).
    pub fn add_ring(&mut self, index: u16) -> Result<()> {
        if let Some(n) = self.queue_num {
            if u64::from(index) >= n {
                bail!("queue {index} wanted, the backend has {n}");
            }
        }
        let size = self.opts.queue_size;
        let mut q = DriverQueue::new(&self.mem, index, size)
            .context(format_args!("allocating queue {index}"))?;
        q.attach(&mut self.fe, &self.mem)
            .context(format_args!("setting up queue {index}"))?;
        let indirect = self.has(virtio::RING_INDIRECT_DESC);
        self.rings.push(Ring::new(q, size, indirect));
        Ok(())
    }

    /// Reads `size` bytes of config space at `offset` (needs the CONFIG protocol
    /// feature).
    pub fn get_config(&mut self, offset: u32, size: u32) -> Result<Vec<u8>> {
        if !self
            .fe
            .protocol_features()
            .contains(ProtocolFeatures::CONFIG)
        {
            bail!(
                "the backend does not offer the CONFIG protocol feature (offered {})",
                self.offered_protocol
            );
        }
        self.fe
            .get_config(offset, size)
            .context(format_args!("GET_CONFIG {size} bytes at {offset}"))
    }

    /// The pid of the process serving the device: SO_PEERCRED on the socket names the
    /// one that listens, a sandboxed program's device process is below it.
    pub fn backend_pid(&self) -> Result<i32> {
        let cred = nix::sys::socket::getsockopt(
            self.fe.connection().stream(),
            nix::sys::socket::sockopt::PeerCredentials,
        )
        .context("SO_PEERCRED")?;
        Ok(crate::scale::serving_process(cred.pid()))
    }

    /// Stops the rings (GET_VRING_BASE, as a VMM does before it goes away). Failures
    /// are reported, not fatal: the connection closes anyway.
    pub fn stop(&mut self) {
        for r in &self.rings {
            if let Err(e) = self.fe.get_vring_base(r.index().into()) {
                eprintln!("bench: stopping queue {}: {e}", r.index());
                return;
            }
        }
    }

    /// What was offered and negotiated, for reports.
    pub fn describe(&self) -> Json {
        let mut j = Json::obj();
        j.set("socket", self.opts.socket.display().to_string())
            .set("offered_features", format!("{:#x}", self.offered))
            .set("features", format!("{:#x}", self.features()))
            .set(
                "offered_protocol_features",
                format!("{:#x}", self.offered_protocol.bits()),
            )
            .set(
                "protocol_features",
                format!("{:#x}", self.fe.protocol_features().bits()),
            )
            .set("event_idx", self.has(virtio::RING_EVENT_IDX))
            .set("indirect", self.has(virtio::RING_INDIRECT_DESC))
            .set("queue_size", self.opts.queue_size)
            .set("queues", self.rings.len());
        if let Ok(pid) = self.backend_pid() {
            j.set("backend_pid", pid);
        }
        j
    }
}

/// Bytes of guest memory `rings` rings of `size` entries take (each part page-aligned
/// as DriverQueue allocates them, with slack).
pub fn ring_bytes(rings: u64, size: u16) -> u64 {
    let n = u64::from(size);
    rings * (16 * n + 6 + 2 * n + 6 + 8 * n + 3 * 4096)
}

/// Checks that the socket exists before connecting, for a clearer error.
pub fn check_socket(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!(
            "{}: no such socket (is the backend running?)",
            path.display()
        );
    }
    Ok(())
}
