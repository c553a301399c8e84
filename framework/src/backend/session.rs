//! `Session`: one frontend connection's protocol state, and the handling of each
//! request after the message layers have checked it.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use log::{debug, info, warn};

use super::vring_config::VringConfig;
use super::worker::{FailureSignal, WorkerCommand, WorkerHandle};
use super::ServeOptions;
use super::{BackendChannel, RequestError};
use crate::device::{Device, DeviceInfo};
use crate::memory::{DirtyLog, MemoryTable, MAX_MEM_SLOTS};
use crate::message::Message;
use crate::protocol::payload::{
    decode_u64, ConfigAccess, InflightInfo, LogBase, MemoryTableDesc, RingFd, SingleRegion,
    VringAddr, VringState,
};
use crate::protocol::{virtio, FdRule, FrontendRequest as R, ProtocolFeatures as P, ReplyRule};
use crate::queue::{Ring, RingAddrs, RingState, Virtqueue};
use crate::sys::unix::SocketPlatformConnection;

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
    vrings: Vec<VringConfig>,
    workers: Vec<WorkerHandle>,
    failure: Arc<FailureSignal>,
}

type Result<T> = std::result::Result<T, RequestError>;

impl<D: Device> Session<D> {
    pub(crate) fn new(
        mut device: D,
        failure: Arc<FailureSignal>,
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
        let mem = Arc::new(MemoryTable::empty());
        let workers = spawn_workers(&mut device, &info, &mem, &failure)?;
        let vrings = (0..info.num_queues)
            .map(|_| VringConfig::default())
            .collect();
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
            vrings,
            workers,
            failure,
        })
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

    /// The body sent when a request that always gets a reply fails.
    pub(crate) fn failure_reply(&self, req: R, body: &[u8]) -> Vec<u8> {
        match req {
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
            R::GET_VRING_BASE => {
                let index = body
                    .get(..4)
                    .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                VringState { index, num: 0 }.encode()
            }
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
        }
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

    fn dispatch(&mut self, req: R, body: &[u8], mut fds: Vec<File>) -> Result<Reply> {
        let name = req.name();
        let u64_reply = |v: u64| Ok(Reply::Body(v.to_ne_bytes().to_vec()));
        match req {
            R::GET_FEATURES => u64_reply(self.offered_features),
            R::SET_FEATURES => {
                self.need_owner(req)?;
                let features = decode_u64(name, body)?;
                if features & !self.offered_features != 0 {
                    return Err(RequestError::BadValue {
                        request: name,
                        what: "features not offered",
                        value: features & !self.offered_features,
                    });
                }
                let logging_changed = (self.acked_features ^ features) & virtio::LOG_ALL != 0;
                self.acked_features = features;
                self.device.set_features(features);
                if logging_changed {
                    self.push_log_state();
                }
                if features & virtio::PROTOCOL_FEATURES == 0 {
                    for i in 0..self.vrings.len() {
                        self.set_enabled(i, true);
                    }
                }
                debug!("{}: features acked {features:#x}", self.info.name);
                Ok(Reply::Done)
            }
            R::SET_OWNER => {
                if self.owner {
                    warn!("{}: SET_OWNER sent again", self.info.name);
                }
                self.owner = true;
                Ok(Reply::Done)
            }
            R::RESET_OWNER => {
                self.reset()?;
                self.owner = false;
                Ok(Reply::Done)
            }
            R::RESET_DEVICE => {
                self.need(req, P::RESET_DEVICE, "RESET_DEVICE")?;
                self.reset()?;
                Ok(Reply::Done)
            }
            R::SET_MEM_TABLE => {
                self.need_owner(req)?;
                let table = MemoryTableDesc::decode(body)?;
                let mem = MemoryTable::from_regions(&table.regions, fds)?;
                info!(
                    "{}: memory table with {} region(s)",
                    self.info.name,
                    mem.len()
                );
                self.install_memory(mem)?;
                Ok(Reply::Done)
            }
            R::ADD_MEM_REG => {
                self.need_owner(req)?;
                self.need(req, P::CONFIGURE_MEM_SLOTS, "CONFIGURE_MEM_SLOTS")?;
                let region = SingleRegion::decode(name, body)?;
                let file = fds.pop().ok_or(RequestError::BadOrder {
                    request: name,
                    why: "no fd",
                })?;
                let mem = self.mem.with_region(region.0, file)?;
                self.install_memory(mem)?;
                Ok(Reply::Done)
            }
            R::REM_MEM_REG => {
                self.need_owner(req)?;
                self.need(req, P::CONFIGURE_MEM_SLOTS, "CONFIGURE_MEM_SLOTS")?;
                let region = SingleRegion::decode(name, body)?;
                drop(fds);
                let mem = self.mem.without_region(&region.0)?;
                self.install_memory(mem)?;
                Ok(Reply::Done)
            }
            R::GET_MAX_MEM_SLOTS => u64_reply(MAX_MEM_SLOTS as u64),
            R::SET_VRING_NUM => {
                self.need_owner(req)?;
                let s = VringState::decode(name, body)?;
                let i = self.ring(req, s.index)?;
                if self.vrings[i].started {
                    return Err(RequestError::BadOrder {
                        request: name,
                        why: "ring is running",
                    });
                }
                let max = u32::from(self.info.max_queue_size);
                // Split rings take powers of two; packed rings any size up to 2^15.
                let shape_ok = self.packed() || s.num.is_power_of_two();
                if s.num == 0 || !shape_ok || s.num > max {
                    return Err(RequestError::BadValue {
                        request: name,
                        what: "ring size",
                        value: s.num.into(),
                    });
                }
                self.vrings[i].num = s.num as u16;
                Ok(Reply::Done)
            }
            R::SET_VRING_ADDR => {
                self.need_owner(req)?;
                let addr = VringAddr::decode(body)?;
                let i = self.ring(req, addr.index)?;
                if self.vrings[i].started {
                    // A running ring may only switch used-ring logging (migration).
                    let same = self.vrings[i].addr.is_some_and(|a| {
                        (a.desc, a.used, a.avail) == (addr.desc, addr.used, addr.avail)
                    });
                    if !same {
                        return Err(RequestError::BadOrder {
                            request: name,
                            why: "ring is running",
                        });
                    }
                    self.vrings[i].addr = Some(addr);
                    self.push_log_state();
                    return Ok(Reply::Done);
                }
                self.vrings[i].addr = Some(addr);
                Ok(Reply::Done)
            }
            R::SET_VRING_BASE => {
                self.need_owner(req)?;
                let s = VringState::decode(name, body)?;
                let i = self.ring(req, s.index)?;
                if self.vrings[i].started {
                    return Err(RequestError::BadOrder {
                        request: name,
                        why: "ring is running",
                    });
                }
                let size = match self.vrings[i].num {
                    0 => self.info.max_queue_size,
                    n => n,
                };
                RingState::decode(s.num, self.packed(), size)?;
                self.vrings[i].base = s.num;
                Ok(Reply::Done)
            }
            R::GET_VRING_BASE => {
                self.need_owner(req)?;
                let s = VringState::decode(name, body)?;
                let i = self.ring(req, s.index)?;
                self.stop_ring(i);
                Ok(Reply::Body(
                    VringState {
                        index: s.index,
                        num: self.vrings[i].base,
                    }
                    .encode(),
                ))
            }
            R::SET_VRING_KICK => {
                self.need_owner(req)?;
                let r = RingFd::decode(name, body)?;
                let i = self.ring(req, r.index.into())?;
                let Some(kick) = fds.pop() else {
                    return Err(RequestError::NotNegotiated {
                        request: name,
                        feature: "INBAND_NOTIFICATIONS (polled ring)",
                    });
                };
                check_eventfd(name, &kick)?;
                set_nonblocking(&kick);
                self.start_ring(i, kick)?;
                Ok(Reply::Done)
            }
            R::SET_VRING_CALL | R::SET_VRING_ERR => {
                self.need_owner(req)?;
                let r = RingFd::decode(name, body)?;
                let i = self.ring(req, r.index.into())?;
                let fd = fds
                    .pop()
                    .map(|f| check_eventfd(name, &f).map(|_| Arc::new(f)))
                    .transpose()?;
                let index = i as u16;
                let cmd = if req == R::SET_VRING_CALL {
                    self.vrings[i].call = fd.clone();
                    WorkerCommand::SetCall { index, call: fd }
                } else {
                    self.vrings[i].err = fd.clone();
                    WorkerCommand::SetErr { index, err: fd }
                };
                if self.vrings[i].started {
                    self.worker_for(i).send(cmd);
                }
                Ok(Reply::Done)
            }
            R::SET_LOG_BASE => {
                self.need(req, P::LOG_SHMFD, "LOG_SHMFD")?;
                let base = LogBase::decode(body)?;
                let file = fds.pop().ok_or(RequestError::BadOrder {
                    request: name,
                    why: "no fd",
                })?;
                self.log = Some(Arc::new(DirtyLog::map(
                    file,
                    base.mmap_size,
                    base.mmap_offset,
                )?));
                self.push_log_state();
                u64_reply(0)
            }
            R::SET_LOG_FD => {
                self.need(req, P::LOG_SHMFD, "LOG_SHMFD")?;
                self.log_fd = fds.pop();
                Ok(Reply::Done)
            }
            R::NET_SET_MTU => {
                self.need(req, P::MTU, "MTU")?;
                let mtu = decode_u64(name, body)?;
                if !(68..=65535).contains(&mtu) {
                    return Err(RequestError::BadValue {
                        request: name,
                        what: "mtu",
                        value: mtu,
                    });
                }
                self.device.set_mtu(mtu as u16)?;
                Ok(Reply::Done)
            }
            R::SEND_RARP => {
                self.need(req, P::RARP, "RARP")?;
                let mac = decode_u64(name, body)?.to_ne_bytes();
                self.device
                    .send_rarp([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])?;
                Ok(Reply::Done)
            }
            R::GET_PROTOCOL_FEATURES => u64_reply(self.offered_protocol.bits()),
            R::SET_PROTOCOL_FEATURES => {
                let bits = decode_u64(name, body)?;
                if bits & !self.offered_protocol.bits() != 0 {
                    return Err(RequestError::BadValue {
                        request: name,
                        what: "protocol features not offered",
                        value: bits & !self.offered_protocol.bits(),
                    });
                }
                self.acked_protocol = P::from_bits(bits);
                debug!(
                    "{}: protocol features {}",
                    self.info.name, self.acked_protocol
                );
                Ok(Reply::Done)
            }
            R::GET_QUEUE_NUM => u64_reply(self.info.num_queues.into()),
            R::SET_VRING_ENABLE => {
                let s = VringState::decode(name, body)?;
                let i = self.ring(req, s.index)?;
                if self.acked_features & virtio::PROTOCOL_FEATURES == 0 && self.acked_features != 0
                {
                    return Err(RequestError::NotNegotiated {
                        request: name,
                        feature: "PROTOCOL_FEATURES",
                    });
                }
                if s.num > 1 {
                    return Err(RequestError::BadValue {
                        request: name,
                        what: "enable",
                        value: s.num.into(),
                    });
                }
                self.set_enabled(i, s.num == 1);
                Ok(Reply::Done)
            }
            R::SET_BACKEND_REQ_FD => {
                self.need(req, P::BACKEND_REQ, "BACKEND_REQ")?;
                let file = fds.pop().ok_or(RequestError::BadOrder {
                    request: name,
                    why: "no fd",
                })?;
                let stream = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(file));
                if stream.peer_addr().is_err() {
                    return Err(RequestError::BadFd {
                        request: name,
                        why: "fd is not a connected unix socket".into(),
                    });
                }
                let conn =
                    SocketPlatformConnection::new(stream).map_err(|e| RequestError::BadFd {
                        request: name,
                        why: e.to_string(),
                    })?;
                self.device
                    .set_backend_channel(BackendChannel::new(conn, self.reply_ack()));
                Ok(Reply::Done)
            }
            R::GET_CONFIG => {
                self.need(req, P::CONFIG, "CONFIG")?;
                let access = ConfigAccess::decode(name, body)?;
                self.check_config_range(req, access.offset, access.payload.len())?;
                let mut payload = vec![0u8; access.payload.len()];
                self.device.read_config(access.offset, &mut payload);
                Ok(Reply::Body(ConfigAccess { payload, ..access }.encode()))
            }
            R::SET_CONFIG => {
                self.need(req, P::CONFIG, "CONFIG")?;
                let access = ConfigAccess::decode(name, body)?;
                self.check_config_range(req, access.offset, access.payload.len())?;
                self.device.write_config(access.offset, &access.payload)?;
                Ok(Reply::Done)
            }
            R::SET_STATUS => {
                self.need(req, P::STATUS, "STATUS")?;
                let v = decode_u64(name, body)?;
                if v > 0xff {
                    return Err(RequestError::BadValue {
                        request: name,
                        what: "status",
                        value: v,
                    });
                }
                self.status = v as u8;
                self.device.set_status(self.status);
                Ok(Reply::Done)
            }
            R::GET_STATUS => {
                self.need(req, P::STATUS, "STATUS")?;
                u64_reply(self.status.into())
            }
            other => Err(RequestError::Unsupported(other.name())),
        }
    }

    fn check_config_range(&self, req: R, offset: u32, len: usize) -> Result<()> {
        let end = u64::from(offset) + len as u64;
        if end > u64::from(self.info.config_size) {
            return Err(RequestError::BadValue {
                request: req.name(),
                what: "config range end",
                value: end,
            });
        }
        Ok(())
    }

    /// The log in force: SET_LOG_BASE's, while VHOST_F_LOG_ALL is acked.
    fn active_log(&self) -> Option<Arc<DirtyLog>> {
        self.log
            .clone()
            .filter(|_| self.acked_features & virtio::LOG_ALL != 0)
    }

    /// The used-ring log address of ring `i`, if it logs.
    fn used_log_addr(&self, i: usize) -> Option<u64> {
        self.vrings[i]
            .addr
            .filter(|a| a.flags & VringAddr::F_LOG != 0)
            .map(|a| a.log)
    }

    /// Tells every worker whether to log and where each running ring logs its used ring.
    fn push_log_state(&mut self) {
        let log = self.active_log();
        let mut per_worker: Vec<Vec<(u16, Option<u64>)>> = vec![Vec::new(); self.workers.len()];
        for i in 0..self.vrings.len() {
            if self.vrings[i].started {
                let w = self
                    .device
                    .queue_worker(i as u16)
                    .min(self.workers.len() - 1);
                per_worker[w].push((i as u16, self.used_log_addr(i)));
            }
        }
        for (w, rings) in self.workers.iter().zip(per_worker) {
            w.set_log(log.clone(), rings);
        }
    }

    fn worker_for(&self, ring: usize) -> &WorkerHandle {
        let w = self
            .device
            .queue_worker(ring as u16)
            .min(self.workers.len() - 1);
        &self.workers[w]
    }

    fn set_enabled(&mut self, i: usize, enabled: bool) {
        self.vrings[i].enabled = enabled;
        if self.vrings[i].started {
            self.worker_for(i).set_enabled(i as u16, enabled);
        }
    }

    fn ring_addrs(&self, mem: &MemoryTable, i: usize) -> Result<RingAddrs> {
        let v = &self.vrings[i];
        let addr = v.addr.ok_or(RequestError::BadOrder {
            request: "SET_VRING_KICK",
            why: "ring addresses not set",
        })?;
        let [desc, avail, used] = Ring::part_lengths(self.packed(), v.num.max(1));
        Ok(RingAddrs {
            desc: mem.uaddr_to_gpa(addr.desc, desc)?,
            avail: mem.uaddr_to_gpa(addr.avail, avail)?,
            used: mem.uaddr_to_gpa(addr.used, used)?,
        })
    }

    /// Whether the rings use the packed layout (VIRTIO_F_RING_PACKED acked).
    fn packed(&self) -> bool {
        self.acked_features & virtio::RING_PACKED != 0
    }

    fn start_ring(&mut self, i: usize, kick: File) -> Result<()> {
        if self.vrings[i].started {
            self.stop_ring(i);
        }
        let name = R::SET_VRING_KICK.name();
        if self.mem.is_empty() {
            return Err(RequestError::BadOrder {
                request: name,
                why: "no memory table",
            });
        }
        let (num, base) = (self.vrings[i].num, self.vrings[i].base);
        if num == 0 {
            return Err(RequestError::BadOrder {
                request: name,
                why: "ring size not set",
            });
        }
        let addrs = self.ring_addrs(&self.mem, i)?;
        let features = self.acked_features;
        let state = RingState::decode(base, self.packed(), num)?;
        let ring = Ring::new(
            &self.mem,
            num,
            addrs,
            state,
            features & virtio::RING_EVENT_IDX != 0,
            features & virtio::RING_INDIRECT_DESC != 0,
        )?;
        let mut vq = Virtqueue::new(i as u16, ring, features & virtio::IN_ORDER != 0)
            .with_name(&self.info.name);
        let log = self.active_log();
        vq.set_ring_log(log.clone().zip(self.used_log_addr(i)));
        vq.set_buffer_log(log);
        vq.set_kick(Some(kick));
        vq.set_call(self.vrings[i].call.clone());
        vq.set_err(self.vrings[i].err.clone());
        vq.set_enabled(self.vrings[i].enabled);
        if !self.worker_for(i).send(WorkerCommand::Start(Box::new(vq))) {
            return Err(RequestError::BadOrder {
                request: name,
                why: "worker has stopped",
            });
        }
        self.vrings[i].started = true;
        debug!(
            "{}: ring {i} started (size {num}, base {base:#x})",
            self.info.name
        );
        Ok(())
    }

    fn stop_ring(&mut self, i: usize) {
        if !self.vrings[i].started {
            return;
        }
        if let Some(state) = self.worker_for(i).stop_queue(i as u16) {
            self.vrings[i].base = state.encode();
        }
        self.vrings[i].started = false;
        debug!(
            "{}: ring {i} stopped at {:#x}",
            self.info.name, self.vrings[i].base
        );
    }

    /// Sends a new table to every worker and waits until each has switched; the old
    /// table is unmapped when the last reference (ours) drops here.
    fn install_memory(&mut self, mem: MemoryTable) -> Result<()> {
        let mut per_worker: Vec<Vec<(u16, RingAddrs)>> = vec![Vec::new(); self.workers.len()];
        for i in 0..self.vrings.len() {
            if self.vrings[i].started {
                let addrs = self.ring_addrs(&mem, i)?;
                let w = self
                    .device
                    .queue_worker(i as u16)
                    .min(self.workers.len() - 1);
                per_worker[w].push((i as u16, addrs));
            }
        }
        let mem = Arc::new(mem);
        for (w, rings) in self.workers.iter().zip(per_worker) {
            w.set_memory(mem.clone(), rings);
        }
        self.mem = mem;
        Ok(())
    }

    /// RESET_DEVICE: rings stopped and forgotten, features cleared, fresh workers.
    fn reset(&mut self) -> Result<()> {
        for i in 0..self.vrings.len() {
            self.stop_ring(i);
        }
        self.workers.clear();
        self.vrings
            .iter_mut()
            .for_each(|v| *v = VringConfig::default());
        self.acked_features = 0;
        self.status = 0;
        self.device.reset();
        self.workers = spawn_workers(&mut self.device, &self.info, &self.mem, &self.failure)
            .map_err(|e| RequestError::Device(e.into()))?;
        Ok(())
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
        // Workers stop and join before the memory they use is unmapped.
        self.workers.clear();
    }
}

fn spawn_workers<D: Device>(
    device: &mut D,
    info: &DeviceInfo,
    mem: &Arc<MemoryTable>,
    failure: &Arc<FailureSignal>,
) -> std::io::Result<Vec<WorkerHandle>> {
    (0..device.worker_count().max(1))
        .map(|i| {
            let w = device.create_worker(i)?;
            WorkerHandle::spawn(
                format!("{}-worker{i}", info.name),
                w,
                mem.clone(),
                failure.clone(),
                info.busy_poll,
            )
        })
        .collect()
}

fn check_eventfd(request: &'static str, f: &File) -> Result<()> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if link == "anon_inode:[eventfd]" {
        Ok(())
    } else {
        Err(RequestError::BadFd {
            request,
            why: format!("fd is not an eventfd ({link})"),
        })
    }
}

fn set_nonblocking(f: &File) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(flags) = fcntl(f.as_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(f.as_fd(), FcntlArg::F_SETFL(flags));
    }
}
