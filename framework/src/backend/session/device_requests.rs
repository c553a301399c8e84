//! Requests the device answers: config space, status, MTU, RARP, and the backend
//! channel it may use.

use std::fs::File;

use super::{u64_reply, Reply, Result, Session};
use crate::backend::{BackendChannel, RequestError};
use crate::device::Device;
use crate::protocol::payload::{decode_u64, ConfigAccess};
use crate::protocol::{FrontendRequest as R, ProtocolFeatures as P};
use crate::sys::unix::SocketPlatformConnection;

impl<D: Device> Session<D> {
    /// NET_SET_MTU: handed to the device after a range check.
    pub(super) fn net_set_mtu(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
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

    /// SEND_RARP: handed to the device.
    pub(super) fn send_rarp(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
        self.need(req, P::RARP, "RARP")?;
        let mac = decode_u64(name, body)?.to_ne_bytes();
        self.device
            .send_rarp([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])?;
        Ok(Reply::Done)
    }

    /// SET_BACKEND_REQ_FD: the device gets a channel for backend-initiated requests.
    pub(super) fn set_backend_req_fd(
        &mut self,
        req: R,
        _body: &[u8],
        mut fds: Vec<File>,
    ) -> Result<Reply> {
        let name = req.name();
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
        let conn = SocketPlatformConnection::new(stream).map_err(|e| RequestError::BadFd {
            request: name,
            why: e.to_string(),
        })?;
        self.device
            .set_backend_channel(BackendChannel::new(conn, self.reply_ack()));
        Ok(Reply::Done)
    }

    /// GET_CONFIG: a range of the device's config space.
    pub(super) fn get_config(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
        self.need(req, P::CONFIG, "CONFIG")?;
        let access = ConfigAccess::decode(name, body)?;
        self.check_config_range(req, access.offset, access.payload.len())?;
        let mut payload = vec![0u8; access.payload.len()];
        self.device.read_config(access.offset, &mut payload);
        Ok(Reply::Body(ConfigAccess { payload, ..access }.encode()))
    }

    /// SET_CONFIG: a range of the device's config space, written by the device.
    pub(super) fn set_config(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
        self.need(req, P::CONFIG, "CONFIG")?;
        let access = ConfigAccess::decode(name, body)?;
        self.check_config_range(req, access.offset, access.payload.len())?;
        self.device.write_config(access.offset, &access.payload)?;
        Ok(Reply::Done)
    }

    /// SET_STATUS: the driver's status byte, for the device.
    pub(super) fn set_status(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
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

    /// GET_STATUS: the status byte last set.
    pub(super) fn get_status(&mut self, req: R, _body: &[u8]) -> Result<Reply> {
        self.need(req, P::STATUS, "STATUS")?;
        u64_reply(self.status.into())
    }

    pub(super) fn check_config_range(&self, req: R, offset: u32, len: usize) -> Result<()> {
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
}
