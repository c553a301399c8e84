//! Feature negotiation: SET_FEATURES and SET_PROTOCOL_FEATURES against what the
//! session offered.

use log::debug;

use super::{Reply, Result, Session};
use crate::backend::RequestError;
use crate::device::Device;
use crate::protocol::payload::decode_u64;
use crate::protocol::{virtio, FrontendRequest as R, ProtocolFeatures as P};

impl<D: Device> Session<D> {
    /// SET_FEATURES: the acked feature bits, checked against the offer.
    pub(super) fn set_features(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
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
            self.push_log_state()?;
        }
        if features & virtio::PROTOCOL_FEATURES == 0 {
            for i in 0..self.vrings.len() {
                self.set_enabled(i, true)?;
            }
        }
        debug!("{}: features acked {features:#x}", self.info.name);
        Ok(Reply::Done)
    }

    /// SET_PROTOCOL_FEATURES: the acked protocol bits, checked against the offer.
    pub(super) fn set_protocol_features(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
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
}
