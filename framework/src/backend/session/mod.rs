//! `Session`: one frontend connection's protocol state, and the handling of each
//! request after the message layers have checked it. The handlers live with their
//! concern: `features`, `memory` (tables and the dirty log), `rings`,
//! `device_requests` (config, status, MTU, RARP, backend channel) and `workers`.

mod device_requests;
mod device_state;
mod features;
mod inflight;
mod memory;
mod rings;
mod workers;

use std::fs::File;
use std::sync::Arc;

use log::warn;

use super::vring_config::VringConfig;
use super::worker::{FailureSignal, WorkerHandle};
use super::RequestError;
use super::{DeviceStats, ServeOptions};
use crate::device::{Device, DeviceInfo};
use crate::memory::{DirtyLog, MemoryTable, MAX_MEM_SLOTS};
use crate::message::Message;
use crate::protocol::payload::{ConfigAccess, InflightInfo, RingFd};
use crate::protocol::{virtio, FdRule, FrontendRequest as R, ProtocolFeatures as P, ReplyRule};
use crate::queue::{InflightArea, QueueStats};
use crate::sys::unix::FaultNotice;
use workers::spawn_workers;

/// Transport feature bits the framework implements for every device.
pub const TRANSPORT_FEATURES: u64 = virtio::VERSION_1
    | virtio::RING_PACKED
    | virtio::LOG_ALL
    | virtio::RING_INDIRECT_DESC
    | virtio::RING_EVENT_IDX
    | virtio::PROTOCOL_FEATURES;

/// Protocol features the framework implements for every device.
pub const FRAMEWORK_PROTOCOL_FEATURES: P = P::from_bits(
    P::MQ.bits()
        | P::LOG_SHMFD.bits()
        | P::REPLY_ACK.bits()
        | P::CONFIG.bits()
        | P::BACKEND_REQ.bits()
        | P::RESET_DEVICE.bits()
        | P::CONFIGURE_MEM_SLOTS.bits()
        | P::STATUS.bits(),
);

/// What to send back for a request.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Nothing (or a REPLY_ACK success).
    Done,
    /// A body of its own.
    Body(Vec<u8>),
    /// A body with an fd (GET_INFLIGHT_FD).
    BodyWithFd(Vec<u8>, File),
}

pub(crate) struct Session<D: Device> {
    device: D,
    info: DeviceInfo,
    offered_features: u64,
    offered_protocol: P,
    acked_features: u64,
    acked_protocol: P,
    owner: bool,
    status: u8,
    mem: Arc<MemoryTable>,
    /// SET_LOG_BASE's log; active while VHOST_F_LOG_ALL is acked.
    log: Option<Arc<DirtyLog>>,
    /// SET_LOG_FD (kept open, as the frontend expects).
    log_fd: Option<File>,
    /// The in-flight area (GET/SET_INFLIGHT_FD), for rings started while it is set.
    inflight: Option<InflightArea>,
    vrings: Vec<VringConfig>,
    workers: Vec<WorkerHandle>,
    failure: Arc<FailureSignal>,
    /// Signalled when a mapping of this connection's files faults (see `FaultGuard`).
    notice: Arc<FaultNotice>,
    /// How long to wait for a worker (`ServeOptions::worker_timeout`).
    worker_timeout: std::time::Duration,
    /// Each queue's counters for the whole connection (a started ring counts into its
    /// queue's).
    queue_stats: Vec<Arc<QueueStats>>,
    /// Where the listener's owner reads them (`ServeOptions::stats`).
    device_stats: Option<DeviceStats>,
    /// SET_DEVICE_STATE_FD's transfer until CHECK_DEVICE_STATE.
    transfer: device_state::Transfer,
}

type Result<T> = std::result::Result<T, RequestError>;

/// A reply of one u64.
fn u64_reply(v: u64) -> Result<Reply> {
    Ok(Reply::Body(v.to_ne_bytes().to_vec()))
}

impl<D: Device> Session<D> {
    pub(crate) fn new(
        mut device: D,
        failure: Arc<FailureSignal>,
        notice: Arc<FaultNotice>,
        options: &ServeOptions,
    ) -> std::io::Result<Self> {
        let mut info = device.info();
        if let Some(t) = options.busy_poll {
            info.busy_poll = t;
        }
        let offered_features = (info.features | TRANSPORT_FEATURES) & !info.masked_features;
        let mut offered_protocol = FRAMEWORK_PROTOCOL_FEATURES | info.protocol_features;
        if info.config_size == 0 {
            offered_protocol = P::from_bits(offered_protocol.bits() & !P::CONFIG.bits());
        }
        let mem = Arc::new(MemoryTable::watched(notice.clone()));
        let worker_timeout = options.worker_timeout();
        let workers = spawn_workers(&mut device, &info, &mem, &failure, worker_timeout)?;
        let vrings = (0..info.num_queues)
            .map(|_| VringConfig::default())
            .collect();
        let queue_stats: Vec<Arc<QueueStats>> =
            (0..info.num_queues).map(|_| Arc::default()).collect();
        let device_stats = options.stats.clone();
        if let Some(s) = &device_stats {
            s.connected(&info.name, &queue_stats);
        }
        Ok(Session {
            device,
            info,
            offered_features,
            offered_protocol,
            acked_features: 0,
            acked_protocol: P::EMPTY,
            owner: false,
            status: 0,
            mem,
            log: None,
            log_fd: None,
            inflight: None,
            vrings,
            workers,
            failure,
            notice,
            worker_timeout,
            queue_stats,
            device_stats,
            transfer: device_state::Transfer::Idle,
        })
    }

    /// What faulted, after the fault notice fired: the regions (and the log) whose
    /// files shrank under their mappings.
    pub(crate) fn fault_report(&self) -> String {
        let mut parts: Vec<String> = self
            .mem
            .faults()
            .map(|(gpa, at)| format!("memory region at gpa {gpa:#x} (offset {at:#x})"))
            .collect();
        if self.log.as_ref().is_some_and(|l| l.faulted()) {
            parts.push("dirty log".into());
        }
        if self.inflight.as_ref().is_some_and(|a| a.faulted()) {
            parts.push("in-flight area".into());
        }
        if parts.is_empty() {
            parts.push("a mapping no longer in use".into());
        }
        parts.join(", ")
    }

    pub(crate) fn name(&self) -> &str {
        &self.info.name
    }

    pub(crate) fn reply_ack(&self) -> bool {
        self.acked_protocol.contains(P::REPLY_ACK)
    }

    /// Handles one request whose header is valid. Layers: size, fd count, body fields,
    /// negotiated feature, order.
    pub(crate) fn handle(&mut self, req: R, msg: Message) -> Result<Reply> {
        let shape = req.shape();
        shape.check_size(msg.body.len())?;
        let per_message = match shape.fds {
            FdRule::PerRegion => (msg.body.len().saturating_sub(8)) / 32,
            FdRule::RingFlag => RingFd::decode(shape.name, &msg.body)?.fd_count(),
            _ => 0,
        };
        shape.check_fds(msg.fds.len(), per_message)?;
        self.dispatch(req, &msg.body, msg.fds)
    }

    /// The body sent when a request that always gets a reply fails; `None` when the
    /// protocol has no failure reply for it (GET_VRING_BASE: any state would read as
    /// valid), and the connection is closed instead.
    pub(crate) fn failure_reply(&self, req: R, body: &[u8]) -> Option<Vec<u8>> {
        Some(match req {
            R::GET_CONFIG => {
                // The full reply length with a size field of 0: frontends read as many
                // bytes as they asked for, then see the failure.
                let word = |at: usize| {
                    body.get(at..at + 4)
                        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                };
                let wanted = body
                    .len()
                    .saturating_sub(ConfigAccess::HEADER_SIZE)
                    .min(ConfigAccess::MAX_SIZE);
                let mut reply = Vec::with_capacity(ConfigAccess::HEADER_SIZE + wanted);
                reply.extend_from_slice(&word(0).to_ne_bytes());
                reply.extend_from_slice(&0u32.to_ne_bytes());
                reply.extend_from_slice(&word(8).to_ne_bytes());
                reply.resize(ConfigAccess::HEADER_SIZE + wanted, 0);
                reply
            }
            R::GET_VRING_BASE => return None,
            R::GET_INFLIGHT_FD => InflightInfo {
                mmap_size: 0,
                mmap_offset: 0,
                num_queues: 0,
                queue_size: 0,
            }
            .encode(),
            // error code 1 in bits 0-7, bit 8: no fd returned
            R::SET_DEVICE_STATE_FD => 0x101u64.to_ne_bytes().to_vec(),
            R::CREATE_CRYPTO_SESSION => {
                let mut b = body.to_vec();
                b.iter_mut().take(8).for_each(|x| *x = 0xff);
                b
            }
            _ => 1u64.to_ne_bytes().to_vec(),
        })
    }

    /// Whether a refused `req` that the frontend cannot be told about (no REPLY_ACK
    /// asked for) closes the connection: after a refused ring address or memory table
    /// the two sides disagree about where the rings and guest memory are.
    pub(crate) fn closes_when_unanswered(&self, req: R) -> bool {
        matches!(
            req,
            R::SET_VRING_ADDR | R::SET_MEM_TABLE | R::ADD_MEM_REG | R::REM_MEM_REG
        )
    }

    fn need(&self, req: R, feature: P, name: &'static str) -> Result<()> {
        if self.acked_protocol.contains(feature) {
            Ok(())
        } else {
            Err(RequestError::NotNegotiated {
                request: req.name(),
                feature: name,
            })
        }
    }

    fn need_owner(&self, req: R) -> Result<()> {
        if self.owner {
            Ok(())
        } else {
            Err(RequestError::BadOrder {
                request: req.name(),
                why: "SET_OWNER has not been sent",
            })
        }
    }

    fn ring(&self, req: R, index: u32) -> Result<usize> {
        if index < u32::from(self.info.num_queues) {
            Ok(index as usize)
        } else {
            Err(RequestError::BadRing {
                request: req.name(),
                index,
                queues: self.info.num_queues,
            })
        }
    }

    /// Routes a checked request to the handler of its concern (features, memory,
    /// rings, device requests, workers: one file each).
    fn dispatch(&mut self, req: R, body: &[u8], fds: Vec<File>) -> Result<Reply> {
        match req {
            R::GET_FEATURES => u64_reply(self.offered_features),
            R::SET_FEATURES => self.set_features(req, body),
            R::SET_OWNER => {
                if self.owner {
                    warn!("{}: SET_OWNER sent again", self.info.name);
                }
                self.owner = true;
                Ok(Reply::Done)
            }
            R::RESET_OWNER => {
                self.reset(req)?;
                self.owner = false;
                Ok(Reply::Done)
            }
            R::RESET_DEVICE => {
                self.need(req, P::RESET_DEVICE, "RESET_DEVICE")?;
                self.reset(req)?;
                Ok(Reply::Done)
            }
            R::SET_MEM_TABLE => self.set_mem_table(req, body, fds),
            R::ADD_MEM_REG => self.add_mem_reg(req, body, fds),
            R::REM_MEM_REG => self.rem_mem_reg(req, body, fds),
            R::GET_MAX_MEM_SLOTS => u64_reply(MAX_MEM_SLOTS as u64),
            R::SET_VRING_NUM => self.set_vring_num(req, body),
            R::SET_VRING_ADDR => self.set_vring_addr(req, body),
            R::SET_VRING_BASE => self.set_vring_base(req, body),
            R::GET_VRING_BASE => self.get_vring_base(req, body),
            R::SET_VRING_KICK => self.set_vring_kick(req, body, fds),
            R::SET_VRING_CALL | R::SET_VRING_ERR => self.set_vring_call_or_err(req, body, fds),
            R::SET_LOG_BASE => self.set_log_base(req, body, fds),
            R::SET_LOG_FD => self.set_log_fd(req, body, fds),
            R::NET_SET_MTU => self.net_set_mtu(req, body),
            R::SEND_RARP => self.send_rarp(req, body),
            R::GET_PROTOCOL_FEATURES => u64_reply(self.offered_protocol.bits()),
            R::SET_PROTOCOL_FEATURES => self.set_protocol_features(req, body),
            R::GET_QUEUE_NUM => u64_reply(self.info.num_queues.into()),
            R::SET_VRING_ENABLE => self.set_vring_enable(req, body),
            R::SET_BACKEND_REQ_FD => self.set_backend_req_fd(req, body, fds),
            R::GET_CONFIG => self.get_config(req, body),
            R::SET_CONFIG => self.set_config(req, body),
            R::SET_STATUS => self.set_status(req, body),
            R::GET_STATUS => self.get_status(req, body),
            R::GET_INFLIGHT_FD => self.get_inflight_fd(req, body),
            R::SET_INFLIGHT_FD => self.set_inflight_fd(req, body, fds),
            R::SET_DEVICE_STATE_FD => self.set_device_state_fd(req, body, fds),
            R::CHECK_DEVICE_STATE => self.check_device_state(req),
            other => Err(RequestError::Unsupported(other.name())),
        }
    }

    /// Whether `req` gets a reply body regardless of REPLY_ACK. SET_LOG_BASE does only
    /// with LOG_SHMFD negotiated; without it the frontend expects none.
    pub(crate) fn always_replies(&self, req: R) -> bool {
        match req {
            R::SET_LOG_BASE => self.acked_protocol.contains(P::LOG_SHMFD),
            _ => req.shape().reply == ReplyRule::Always,
        }
    }
}

impl<D: Device> Drop for Session<D> {
    fn drop(&mut self) {
        self.finish_transfer();
        // Workers stop and join before the memory they use is unmapped.
        self.workers.clear();
        if let Some(s) = &self.device_stats {
            s.disconnected();
        }
    }
}
