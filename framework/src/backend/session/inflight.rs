//! The in-flight area (INFLIGHT_SHMFD): GET_INFLIGHT_FD creates one, SET_INFLIGHT_FD
//! maps the frontend's (the same area, after a reconnect), and every ring started while
//! it is set records its chains in it.

use log::info;

use super::{Reply, Result, Session};
use crate::backend::RequestError;
use crate::device::Device;
use crate::protocol::payload::InflightInfo;
use crate::protocol::{FrontendRequest as R, ProtocolFeatures as P};
use crate::queue::{InflightArea, Ring};

impl<D: Device> Session<D> {
    /// GET_INFLIGHT_FD: a new, sealed area for the queues and size the frontend asks
    /// for, in the layout of the negotiated rings (SET_FEATURES comes first).
    pub(super) fn get_inflight_fd(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
        self.need(req, P::INFLIGHT_SHMFD, "INFLIGHT_SHMFD")?;
        self.need_owner(req)?;
        let asked = InflightInfo::decode(name, body)?;
        self.check_inflight_queues(req, &asked)?;
        let (area, fd) = InflightArea::create(
            asked.num_queues,
            asked.queue_size,
            self.packed(),
            Some(self.notice.clone()),
        )?;
        let body = area.info().encode();
        self.inflight = Some(area);
        Ok(Reply::BodyWithFd(body, fd))
    }

    /// SET_INFLIGHT_FD: the area rings record their chains in, as the frontend kept it.
    pub(super) fn set_inflight_fd(
        &mut self,
        req: R,
        body: &[u8],
        mut fds: Vec<std::fs::File>,
    ) -> Result<Reply> {
        let name = req.name();
        self.need(req, P::INFLIGHT_SHMFD, "INFLIGHT_SHMFD")?;
        self.need_owner(req)?;
        let info = InflightInfo::decode(name, body)?;
        let Some(fd) = fds.pop() else {
            return Err(RequestError::BadFd {
                request: name,
                why: "no fd".into(),
            });
        };
        self.check_inflight_queues(req, &info)?;
        if self.vrings.iter().any(|v| v.started) {
            return Err(RequestError::BadOrder {
                request: name,
                why: "rings are running",
            });
        }
        let area = InflightArea::map(&info, fd, self.packed(), Some(self.notice.clone()))?;
        info!(
            "{}: in-flight area of {} queue(s) x {} entries set",
            self.info.name, info.num_queues, info.queue_size
        );
        self.inflight = Some(area);
        Ok(Reply::Done)
    }

    fn check_inflight_queues(&self, req: R, info: &InflightInfo) -> Result<()> {
        if info.num_queues == 0 || info.num_queues > self.info.num_queues {
            return Err(RequestError::BadValue {
                request: req.name(),
                what: "num_queues",
                value: info.num_queues.into(),
            });
        }
        if info.queue_size == 0 || info.queue_size > self.info.max_queue_size {
            return Err(RequestError::BadValue {
                request: req.name(),
                what: "queue_size",
                value: info.queue_size.into(),
            });
        }
        Ok(())
    }

    /// Hands ring `i` its part of the in-flight area, if there is one, and says how
    /// many chains a previous process left in flight. True when the ring resumes from
    /// a previous process's records (a reconnect).
    pub(super) fn attach_inflight(&self, i: usize, ring: &mut Ring) -> Result<bool> {
        let Some(area) = &self.inflight else {
            return Ok(false);
        };
        if area.packed() != self.packed() {
            return Err(RequestError::BadOrder {
                request: R::SET_VRING_KICK.name(),
                why: "the in-flight area was made for the other ring layout",
            });
        }
        // A queue beyond the area (the frontend described fewer) keeps no records.
        let Ok(part) = area.queue(i as u16) else {
            return Ok(false);
        };
        let Some(resubmitted) = ring.attach_inflight(&self.mem, part)? else {
            info!(
                "{}: ring {i}: in-flight records on (a new area)",
                self.info.name
            );
            return Ok(false);
        };
        if resubmitted > 0 {
            info!(
                "{}: ring {i}: in-flight records on; {resubmitted} request(s) left in \
                 flight are submitted again",
                self.info.name
            );
        } else {
            info!(
                "{}: ring {i}: in-flight records on; nothing was left in flight",
                self.info.name
            );
        }
        Ok(true)
    }
}
