//! `Frontend`: the request side of a vhost-user connection.

use std::fs::File;
use std::os::fd::AsFd;

use super::{FrontendError, FrontendMemory};
use crate::message::{read_message, write_message};
use crate::protocol::payload::{
    ConfigAccess, DeviceStateTransfer, InflightInfo, MemoryRegionDesc, MemoryTableDesc, RingFd,
    SingleRegion, VringAddr, VringState,
};
use crate::protocol::{virtio, FrontendRequest as R, HeaderFlags, ProtocolFeatures, ReplyRule};
use crate::sys::unix::SocketPlatformConnection;

/// A connection to a backend, with typed requests.
///
/// # Example
/// ```no_run
/// use vhost_user_sync::frontend::Frontend;
/// let mut fe = Frontend::connect("/tmp/rng.sock").unwrap();
/// let (features, protocol) = fe.negotiate(u64::MAX, u64::MAX).unwrap();
/// println!("features {features:#x}, protocol {protocol}");
/// ```
#[derive(Debug)]
pub struct Frontend {
    conn: SocketPlatformConnection,
    features: u64,
    protocol: ProtocolFeatures,
}

type Result<T> = std::result::Result<T, FrontendError>;

impl Frontend {
    /// Connects to a backend listening at `path`.
    pub fn connect(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Ok(Self::from_connection(SocketPlatformConnection::connect(
            path,
        )?))
    }

    /// Uses an established connection.
    pub fn from_connection(conn: SocketPlatformConnection) -> Self {
        Frontend {
            conn,
            features: 0,
            protocol: ProtocolFeatures::EMPTY,
        }
    }

    /// The socket.
    pub fn connection(&self) -> &SocketPlatformConnection {
        &self.conn
    }

    /// Negotiated virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Negotiated protocol features.
    pub fn protocol_features(&self) -> ProtocolFeatures {
        self.protocol
    }

    /// Sends `req` and returns the reply body if one is expected. With REPLY_ACK
    /// negotiated every request asks for an ack, and a non-zero ack is an error.
    pub fn request(&mut self, req: R, body: &[u8], fds: &[&File]) -> Result<Option<Vec<u8>>> {
        let always = req.shape().reply == ReplyRule::Always;
        let ack = !always && self.protocol.contains(ProtocolFeatures::REPLY_ACK);
        let flags = if ack {
            HeaderFlags::REQUEST.with_need_reply()
        } else {
            HeaderFlags::REQUEST
        };
        write_message(&self.conn, req.number(), flags, body, fds)?;
        if !always && !ack {
            return Ok(None);
        }
        let msg = read_message(&self.conn, true)?.ok_or(FrontendError::BadReply {
            request: req.name(),
            why: "no reply".into(),
        })?;
        if msg.header.request != req.number() || msg.header.flags != HeaderFlags::REPLY_FLAGS {
            return Err(FrontendError::BadReply {
                request: req.name(),
                why: format!("header {:?}", msg.header),
            });
        }
        if ack {
            let v = u64_of(req, &msg.body)?;
            if v != 0 {
                return Err(FrontendError::Nack {
                    request: req.name(),
                    value: v,
                });
            }
            return Ok(None);
        }
        Ok(Some(msg.body))
    }

    fn get_u64(&mut self, req: R) -> Result<u64> {
        let body = self.request(req, &[], &[])?.unwrap_or_default();
        u64_of(req, &body)
    }

    fn set_u64(&mut self, req: R, v: u64) -> Result<()> {
        self.request(req, &v.to_ne_bytes(), &[]).map(|_| ())
    }

    /// SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES and SET_FEATURES, acking
    /// what both sides have within `want` / `want_protocol`. Returns what was acked.
    ///
    /// The ring layout is the driver's choice, not a feature to take whenever it is
    /// offered: `negotiate` never acks `VIRTIO_F_RING_PACKED` (split rings, for
    /// [`DriverQueue::new`](super::DriverQueue::new)); [`Self::negotiate_packed`] does.
    pub fn negotiate(&mut self, want: u64, want_protocol: u64) -> Result<(u64, ProtocolFeatures)> {
        self.negotiate_layout(want & !virtio::RING_PACKED, want_protocol)
    }

    /// [`Self::negotiate`] for packed rings
    /// ([`DriverQueue::new_packed`](super::DriverQueue::new_packed)): acks
    /// `VIRTIO_F_RING_PACKED` with the rest of `want`.
    pub fn negotiate_packed(
        &mut self,
        want: u64,
        want_protocol: u64,
    ) -> Result<(u64, ProtocolFeatures)> {
        self.negotiate_layout(want | virtio::RING_PACKED, want_protocol)
    }

    fn negotiate_layout(
        &mut self,
        want: u64,
        want_protocol: u64,
    ) -> Result<(u64, ProtocolFeatures)> {
        self.set_owner()?;
        let offered = self.get_features()?;
        if offered & virtio::PROTOCOL_FEATURES != 0 {
            let p = self.get_u64(R::GET_PROTOCOL_FEATURES)? & want_protocol;
            self.set_u64(R::SET_PROTOCOL_FEATURES, p)?;
            self.protocol = ProtocolFeatures::from_bits(p);
        }
        let acked = offered & want;
        self.set_features(acked)?;
        Ok((acked, self.protocol))
    }

    /// SET_OWNER.
    pub fn set_owner(&mut self) -> Result<()> {
        self.request(R::SET_OWNER, &[], &[]).map(|_| ())
    }

    /// GET_FEATURES.
    pub fn get_features(&mut self) -> Result<u64> {
        self.get_u64(R::GET_FEATURES)
    }

    /// SET_FEATURES.
    pub fn set_features(&mut self, features: u64) -> Result<()> {
        self.set_u64(R::SET_FEATURES, features)?;
        self.features = features;
        Ok(())
    }

    /// GET_PROTOCOL_FEATURES.
    pub fn get_protocol_features(&mut self) -> Result<ProtocolFeatures> {
        Ok(ProtocolFeatures::from_bits(
            self.get_u64(R::GET_PROTOCOL_FEATURES)?,
        ))
    }

    /// SET_PROTOCOL_FEATURES.
    pub fn set_protocol_features(&mut self, p: ProtocolFeatures) -> Result<()> {
        self.set_u64(R::SET_PROTOCOL_FEATURES, p.bits())?;
        self.protocol = p;
        Ok(())
    }

    /// GET_QUEUE_NUM.
    pub fn get_queue_num(&mut self) -> Result<u64> {
        self.get_u64(R::GET_QUEUE_NUM)
    }

    /// GET_MAX_MEM_SLOTS.
    pub fn get_max_mem_slots(&mut self) -> Result<u64> {
        self.get_u64(R::GET_MAX_MEM_SLOTS)
    }

    /// SET_MEM_TABLE with every region of `mem`.
    pub fn set_mem_table(&mut self, mem: &FrontendMemory) -> Result<()> {
        let body = MemoryTableDesc {
            regions: mem.regions().to_vec(),
        }
        .encode();
        let fds: Vec<&File> = mem.files().iter().collect();
        self.request(R::SET_MEM_TABLE, &body, &fds).map(|_| ())
    }

    /// ADD_MEM_REG.
    pub fn add_mem_region(&mut self, region: MemoryRegionDesc, file: &File) -> Result<()> {
        self.request(R::ADD_MEM_REG, &SingleRegion(region).encode(), &[file])
            .map(|_| ())
    }

    /// REM_MEM_REG.
    pub fn remove_mem_region(&mut self, region: MemoryRegionDesc) -> Result<()> {
        self.request(R::REM_MEM_REG, &SingleRegion(region).encode(), &[])
            .map(|_| ())
    }

    /// SET_LOG_BASE: shares a dirty log of `size` bytes at `offset` in `file`.
    pub fn set_log_base(&mut self, size: u64, offset: u64, file: &File) -> Result<()> {
        let body = crate::protocol::payload::LogBase {
            mmap_size: size,
            mmap_offset: offset,
        }
        .encode();
        let reply = self
            .request(R::SET_LOG_BASE, &body, &[file])?
            .unwrap_or_default();
        match u64_of(R::SET_LOG_BASE, &reply)? {
            0 => Ok(()),
            v => Err(FrontendError::Nack {
                request: "SET_LOG_BASE",
                value: v,
            }),
        }
    }

    /// SET_BACKEND_REQ_FD: gives the backend `channel` (one end of a connected unix
    /// socket pair) for its own requests, such as CONFIG_CHANGE_MSG.
    pub fn set_backend_req_fd(&mut self, channel: &std::os::unix::net::UnixStream) -> Result<()> {
        let file = File::from(std::os::fd::OwnedFd::from(channel.try_clone()?));
        self.request(R::SET_BACKEND_REQ_FD, &[], &[&file])
            .map(|_| ())
    }

    /// SET_VRING_NUM.
    pub fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        self.request(R::SET_VRING_NUM, &VringState { index, num }.encode(), &[])
            .map(|_| ())
    }

    /// SET_VRING_BASE.
    pub fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        self.request(
            R::SET_VRING_BASE,
            &VringState { index, num: base }.encode(),
            &[],
        )
        .map(|_| ())
    }

    /// GET_VRING_BASE: stops the ring and returns its next avail index.
    pub fn get_vring_base(&mut self, index: u32) -> Result<u32> {
        let body = self.request(
            R::GET_VRING_BASE,
            &VringState { index, num: 0 }.encode(),
            &[],
        )?;
        let s = VringState::decode("GET_VRING_BASE", &body.unwrap_or_default()).map_err(|e| {
            FrontendError::BadReply {
                request: "GET_VRING_BASE",
                why: e.to_string(),
            }
        })?;
        Ok(s.num)
    }

    /// GET_INFLIGHT_FD: asks the backend for an in-flight area for `num_queues` rings
    /// of `queue_size` entries (after SET_FEATURES: the layout follows the rings').
    /// Returns its description and fd, or `None` when the backend keeps no records for
    /// these rings (it answered with an empty area). Keep both for SET_INFLIGHT_FD on
    /// every start, and after a reconnect.
    pub fn get_inflight_fd(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Option<(InflightInfo, File)>> {
        let req = R::GET_INFLIGHT_FD;
        let asked = InflightInfo {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues,
            queue_size,
        };
        write_message(
            &self.conn,
            req.number(),
            HeaderFlags::REQUEST,
            &asked.encode(),
            &[],
        )?;
        let bad = |why: String| FrontendError::BadReply {
            request: req.name(),
            why,
        };
        let mut msg = read_message(&self.conn, true)?.ok_or_else(|| bad("no reply".into()))?;
        if msg.header.request != req.number() || msg.header.flags != HeaderFlags::REPLY_FLAGS {
            return Err(bad(format!("header {:?}", msg.header)));
        }
        let info = InflightInfo::decode(req.name(), &msg.body).map_err(|e| bad(e.to_string()))?;
        if info.mmap_size == 0 {
            return Ok(None);
        }
        let fd = msg
            .fds
            .pop()
            .ok_or_else(|| bad("no fd with the area".into()))?;
        Ok(Some((info, fd)))
    }

    /// SET_INFLIGHT_FD: hands the backend the in-flight area (before the rings start).
    pub fn set_inflight_fd(&mut self, info: &InflightInfo, fd: &File) -> Result<()> {
        self.request(R::SET_INFLIGHT_FD, &info.encode(), &[fd])
            .map(|_| ())
    }

    /// SET_VRING_ADDR.
    pub fn set_vring_addr(&mut self, addr: &VringAddr) -> Result<()> {
        self.request(R::SET_VRING_ADDR, &addr.encode(), &[])
            .map(|_| ())
    }

    /// SET_VRING_KICK / SET_VRING_CALL / SET_VRING_ERR with an fd (or none).
    pub fn set_vring_fd(&mut self, req: R, index: u8, fd: Option<&File>) -> Result<()> {
        let body = RingFd {
            index,
            no_fd: fd.is_none(),
        }
        .encode();
        let fds: Vec<&File> = fd.into_iter().collect();
        self.request(req, &body, &fds).map(|_| ())
    }

    /// SET_VRING_ENABLE.
    pub fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        self.request(
            R::SET_VRING_ENABLE,
            &VringState {
                index,
                num: enable.into(),
            }
            .encode(),
            &[],
        )
        .map(|_| ())
    }

    /// GET_CONFIG of `size` bytes at `offset`.
    pub fn get_config(&mut self, offset: u32, size: u32) -> Result<Vec<u8>> {
        let body = ConfigAccess {
            offset,
            flags: 0,
            payload: vec![0; size as usize],
        }
        .encode();
        let reply = self.request(R::GET_CONFIG, &body, &[])?.unwrap_or_default();
        // A size field of 0 is the backend's failure reply.
        if size != 0 && reply.get(4..8).is_some_and(|b| b == [0; 4]) {
            return Err(FrontendError::Nack {
                request: "GET_CONFIG",
                value: 0,
            });
        }
        let c =
            ConfigAccess::decode("GET_CONFIG", &reply).map_err(|e| FrontendError::BadReply {
                request: "GET_CONFIG",
                why: e.to_string(),
            })?;
        if c.payload.len() != size as usize {
            return Err(FrontendError::Nack {
                request: "GET_CONFIG",
                value: c.payload.len() as u64,
            });
        }
        Ok(c.payload)
    }

    /// SET_STATUS.
    pub fn set_status(&mut self, status: u8) -> Result<()> {
        self.set_u64(R::SET_STATUS, status.into())
    }

    /// GET_STATUS.
    pub fn get_status(&mut self) -> Result<u8> {
        Ok(self.get_u64(R::GET_STATUS)? as u8)
    }

    /// RESET_DEVICE.
    pub fn reset_device(&mut self) -> Result<()> {
        self.request(R::RESET_DEVICE, &[], &[]).map(|_| ())
    }

    /// Sends raw bytes as a message (for testing hostile inputs), returning nothing.
    pub fn send_raw(&mut self, request: u32, flags: u32, body: &[u8], fds: &[&File]) -> Result<()> {
        let header = crate::protocol::Header {
            request,
            flags: HeaderFlags::from_bits(flags).unwrap_or(HeaderFlags::REQUEST),
            size: body.len() as u32,
        };
        let mut raw = header.encode();
        raw[4..8].copy_from_slice(&flags.to_ne_bytes());
        let fds: Vec<_> = fds
            .iter()
            .map(|f| std::os::fd::AsRawFd::as_raw_fd(&f.as_fd()))
            .collect();
        self.conn.send_message(
            &raw,
            body,
            &[],
            if fds.is_empty() { None } else { Some(&fds) },
        )?;
        Ok(())
    }

    /// Reads one message (a reply to something sent with [`Self::send_raw`]).
    pub fn read_reply(&mut self) -> Result<crate::message::Message> {
        read_message(&self.conn, true)?.ok_or(FrontendError::BadReply {
            request: "raw",
            why: "none".into(),
        })
    }

    /// SET_DEVICE_STATE_FD in the stopped phase: `direction` 0 has the backend write its
    /// device state to `fd`, 1 has it read one from `fd`. Returns the backend's answer
    /// (bits 0-7: 0 on success; bit 8: it returns no fd of its own).
    pub fn set_device_state_fd(&mut self, direction: u32, fd: &File) -> Result<u64> {
        let req = R::SET_DEVICE_STATE_FD;
        let body = DeviceStateTransfer {
            direction,
            phase: 0,
        }
        .encode();
        let reply = self.request(req, &body, &[fd])?.unwrap_or_default();
        let v = u64_of(req, &reply)?;
        if v & 0xff != 0 {
            return Err(FrontendError::Nack {
                request: req.name(),
                value: v,
            });
        }
        Ok(v)
    }

    /// CHECK_DEVICE_STATE: `Ok` when the last transfer succeeded, the backend's
    /// nonzero answer as a [`FrontendError::Nack`] otherwise.
    pub fn check_device_state(&mut self) -> Result<()> {
        let req = R::CHECK_DEVICE_STATE;
        let reply = self.request(req, &[], &[])?.unwrap_or_default();
        match u64_of(req, &reply)? {
            0 => Ok(()),
            value => Err(FrontendError::Nack {
                request: req.name(),
                value,
            }),
        }
    }

    /// The device's own state, as a migration saves it: every ring must be stopped
    /// first (GET_VRING_BASE). Reads the backend's pipe to its end, then checks.
    ///
    /// ```no_run
    /// # use vhost_user_sync::frontend::Frontend;
    /// let mut a = Frontend::connect("/tmp/a.sock")?;
    /// let mut b = Frontend::connect("/tmp/b.sock")?;
    /// // ... negotiate DEVICE_STATE on both, stop a's rings ...
    /// let state = a.save_device_state()?;
    /// b.load_device_state(&state)?;
    /// # Ok::<(), vhost_user_sync::frontend::FrontendError>(())
    /// ```
    pub fn save_device_state(&mut self) -> Result<Vec<u8>> {
        use std::io::Read;
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| FrontendError::Io(e.into()))?;
        let wr = File::from(wr);
        self.set_device_state_fd(0, &wr)?;
        // Our copy of the write end goes, so the read ends when the backend's does.
        drop(wr);
        let mut state = Vec::new();
        File::from(rd).read_to_end(&mut state)?;
        self.check_device_state()?;
        Ok(state)
    }

    /// Loads `state` (from [`Self::save_device_state`]) into the device before its rings
    /// start: writes it to the backend's pipe, closes it, then checks.
    pub fn load_device_state(&mut self, state: &[u8]) -> Result<()> {
        use std::io::Write;
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| FrontendError::Io(e.into()))?;
        let rd = File::from(rd);
        self.set_device_state_fd(1, &rd)?;
        drop(rd);
        let mut wr = File::from(wr);
        // A backend that stops reading (it refused the state) closes its end: the write
        // fails with EPIPE, and CHECK_DEVICE_STATE says why.
        let written = wr.write_all(state);
        drop(wr);
        self.check_device_state()?;
        written.map_err(FrontendError::Io)
    }
}

fn u64_of(req: R, body: &[u8]) -> Result<u64> {
    let b: [u8; 8] = body.try_into().map_err(|_| FrontendError::BadReply {
        request: req.name(),
        why: format!("{} bytes, want 8", body.len()),
    })?;
    Ok(u64::from_ne_bytes(b))
}
