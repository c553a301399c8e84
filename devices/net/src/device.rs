//! The device: queue layout, features, config space and the host backend.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use vhost_user_sync::backend::BackendChannel;
use vhost_user_sync::device::{Device, DeviceError, DeviceInfo};
use vhost_user_sync::protocol::ProtocolFeatures;

use crate::features::*;
use crate::persistence::NetState;
use crate::tap::Tap;
use crate::tap_ring::TapRing;
use crate::worker::{NetWorker, PairIo};
use crate::NetMetrics;

/// Virtio device id of a network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// VIRTIO_NET_S_LINK_UP.
pub const STATUS_LINK_UP: u16 = 1;
/// Bytes of config space served: mac, status, max_virtqueue_pairs, mtu.
pub const CONFIG_SIZE: u32 = 12;

/// Where frames go and come from.
#[derive(Debug)]
pub enum NetBackend {
    /// A tap device, one queue per queue pair.
    Tap(Vec<Tap>),
    /// Nothing: TX frames are checked and counted, RX frames of `frame_len` bytes are
    /// generated whenever the guest offers buffers.
    Null {
        /// Bytes per generated frame (without the virtio header).
        frame_len: usize,
    },
}

impl NetBackend {
    fn try_clone(&self) -> io::Result<NetBackend> {
        Ok(match self {
            NetBackend::Tap(t) => {
                NetBackend::Tap(t.iter().map(Tap::try_clone).collect::<io::Result<_>>()?)
            }
            NetBackend::Null { frame_len } => NetBackend::Null {
                frame_len: *frame_len,
            },
        })
    }
}

/// How TX frames reach a tap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TapIo {
    /// Each batch of frames (up to 32) in one system call through io_uring, in ring
    /// order. Where io_uring is not available (an old kernel, `kernel.io_uring_disabled`,
    /// a seccomp policy) the worker says so in the log and writes as [`TapIo::Sync`].
    #[default]
    IoUring,
    /// One `writev` per frame.
    Sync,
}

/// Settings of a net device.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// MAC address offered to the guest.
    pub mac: [u8; 6],
    /// MTU offered (VIRTIO_NET_F_MTU), if any.
    pub mtu: Option<u16>,
    /// Queue pairs (MQ when more than one).
    pub queue_pairs: u16,
    /// Run each queue pair on its own worker thread.
    pub worker_per_pair: bool,
    /// Largest queue size accepted.
    pub max_queue_size: u16,
    /// How TX frames reach a tap.
    pub tap_io: TapIo,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            mtu: None,
            queue_pairs: 1,
            worker_per_pair: false,
            max_queue_size: 1024,
            tap_io: TapIo::IoUring,
        }
    }
}

/// A virtio-net device.
///
/// # Example
/// ```
/// use vhost_user_sync::device::Device;
/// use vhost_user_sync_net::{NetBackend, NetConfig, NetDevice};
/// let dev = NetDevice::new(NetConfig::default(), &NetBackend::Null { frame_len: 60 }, Default::default()).unwrap();
/// assert_eq!(dev.info().num_queues, 3); // rx, tx, ctrl
/// ```
#[derive(Debug)]
pub struct NetDevice {
    config: NetConfig,
    backend: NetBackend,
    acked: Arc<AtomicU64>,
    state: Arc<Mutex<NetState>>,
    channel: Arc<Mutex<Option<BackendChannel>>>,
    metrics: Arc<NetMetrics>,
}

impl NetDevice {
    /// A device for one connection, sharing `backend`'s taps (they outlive connections).
    pub fn new(
        config: NetConfig,
        backend: &NetBackend,
        metrics: Arc<NetMetrics>,
    ) -> io::Result<Self> {
        if let NetBackend::Tap(taps) = backend {
            if taps.len() != usize::from(config.queue_pairs) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "one tap queue per queue pair",
                ));
            }
        }
        let state = NetState {
            mac: config.mac,
            status: STATUS_LINK_UP,
            acked: 0,
        };
        Ok(NetDevice {
            backend: backend.try_clone()?,
            config,
            acked: Arc::default(),
            state: Arc::new(Mutex::new(state)),
            channel: Arc::default(),
            metrics,
        })
    }

    fn ctrl_queue(&self) -> u16 {
        2 * self.config.queue_pairs
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE as usize] {
        let st = *self.state.lock();
        let mut c = [0u8; CONFIG_SIZE as usize];
        c[..6].copy_from_slice(&st.mac);
        c[6..8].copy_from_slice(&st.status.to_le_bytes());
        c[8..10].copy_from_slice(&self.config.queue_pairs.to_le_bytes());
        c[10..12].copy_from_slice(&self.config.mtu.unwrap_or(0).to_le_bytes());
        c
    }
}

impl Device for NetDevice {
    type Worker = NetWorker;

    fn sandbox_needs(&self) -> vhost_user_sync::sandbox::SandboxNeeds {
        crate::sandbox::needs(&self.backend, self.config.tap_io)
    }

    fn info(&self) -> DeviceInfo {
        // IN_ORDER: every queue of this device returns chains in the order it took
        // them (TX and control one by one, RX undoes what it does not fill).
        let mut features = vhost_user_sync::protocol::virtio::IN_ORDER
            | MAC
            | STATUS
            | MRG_RXBUF
            | CSUM
            | GUEST_CSUM
            | HOST_TSO4
            | HOST_TSO6
            | HOST_ECN
            | GUEST_TSO4
            | GUEST_TSO6
            | GUEST_ECN
            | CTRL_VQ
            | CTRL_RX
            | CTRL_MAC_ADDR
            | MQ;
        if self.config.mtu.is_some() {
            features |= MTU;
        }
        DeviceInfo::new("net", VIRTIO_ID_NET, self.ctrl_queue() + 1)
            .with_features(features)
            .with_config_size(CONFIG_SIZE)
            .with_max_queue_size(self.config.max_queue_size)
            .with_protocol_features(ProtocolFeatures::MTU | ProtocolFeatures::RARP)
            // The MAC, link status and offloads move with a migration.
            .with_device_state()
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = c.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), DeviceError> {
        // Only the MAC is writable (legacy drivers without CTRL_MAC_ADDR).
        let end = offset as usize + data.len();
        if end > 6 {
            return Err(DeviceError::ReadOnlyConfig { offset });
        }
        self.state.lock().mac[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    fn set_features(&mut self, features: u64) {
        self.acked.store(features, Ordering::Release);
        if let NetBackend::Tap(taps) = &self.backend {
            if let Some(Err(e)) = taps.first().map(|t| t.set_offload_for(features)) {
                log::warn!("net: tap offloads: {e}");
            }
        }
    }

    fn worker_count(&self) -> usize {
        if self.config.worker_per_pair {
            usize::from(self.config.queue_pairs)
        } else {
            1
        }
    }

    fn queue_worker(&self, queue: u16) -> usize {
        if queue >= self.ctrl_queue() || !self.config.worker_per_pair {
            0
        } else {
            usize::from(queue / 2)
        }
    }

    fn create_worker(&mut self, index: usize) -> io::Result<NetWorker> {
        let pairs: Vec<u16> = if self.config.worker_per_pair {
            vec![index as u16]
        } else {
            (0..self.config.queue_pairs).collect()
        };
        let ios = pairs
            .into_iter()
            .map(|p| {
                let tap = match &self.backend {
                    NetBackend::Tap(t) => Some(t[usize::from(p)].try_clone()?),
                    NetBackend::Null { .. } => None,
                };
                Ok(PairIo { pair: p, tap })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let frame_len = match self.backend {
            NetBackend::Null { frame_len } => frame_len,
            NetBackend::Tap(_) => 0,
        };
        // Worker 0 also watches the tap's link state.
        let link = match (&self.backend, index) {
            (NetBackend::Tap(t), 0) => match crate::link::LinkWatch::new(t[0].name()) {
                Ok(w) => {
                    let up = w.is_up();
                    self.state.lock().status = if up { STATUS_LINK_UP } else { 0 };
                    Some(w)
                }
                Err(e) => {
                    log::warn!("net: cannot watch the link state of {}: {e}", t[0].name());
                    None
                }
            },
            _ => None,
        };
        let tap_ring = match (&self.backend, self.config.tap_io) {
            (NetBackend::Tap(_), TapIo::IoUring) => match TapRing::new() {
                Ok(ring) => Some(ring),
                Err(e) => {
                    log::info!("net: no io_uring for tap writes ({e}): one writev per frame");
                    None
                }
            },
            _ => None,
        };
        Ok(NetWorker::new(
            ios,
            (index == 0).then_some(self.ctrl_queue()),
            self.config.queue_pairs,
            frame_len,
            self.acked.clone(),
            self.state.clone(),
            self.metrics.clone(),
        )
        .with_link_watch(link, self.channel.clone())
        .with_tap_ring(tap_ring))
    }

    fn set_backend_channel(&mut self, channel: BackendChannel) {
        *self.channel.lock() = Some(channel);
    }

    fn set_mtu(&mut self, mtu: u16) -> Result<(), DeviceError> {
        log::info!("net: frontend set MTU {mtu}");
        self.config.mtu = Some(mtu);
        Ok(())
    }

    fn send_rarp(&mut self, mac: [u8; 6]) -> Result<(), DeviceError> {
        if let NetBackend::Tap(taps) = &self.backend {
            if let Some(tap) = taps.first() {
                let frame = crate::worker::rarp_frame(mac);
                nix::unistd::write(tap.file(), &frame).map_err(io::Error::from)?;
                log::info!(
                    "net: announced {} on the tap (RARP)",
                    mac.map(|b| format!("{b:02x}")).join(":")
                );
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.acked.store(0, Ordering::Release);
        *self.state.lock() = NetState {
            mac: self.config.mac,
            status: STATUS_LINK_UP,
            acked: 0,
        };
    }

    fn save_state(&mut self) -> Result<Vec<u8>, DeviceError> {
        let mut s = *self.state.lock();
        s.acked = self.acked.load(Ordering::Acquire);
        Ok(s.to_bytes())
    }

    /// The MAC and status take the saved ones; the tap gets the offloads the saved
    /// features call for (the frontend acks the same features again before the rings
    /// start).
    fn load_state(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        let s = NetState::from_bytes(state).map_err(DeviceError::Other)?;
        if let NetBackend::Tap(taps) = &self.backend {
            if let Some(tap) = taps.first() {
                tap.set_offload_for(s.acked)
                    .map_err(|e| DeviceError::Other(format!("tap offloads: {e}")))?;
            }
        }
        let mut st = self.state.lock();
        st.mac = s.mac;
        st.status = s.status;
        Ok(())
    }
}
