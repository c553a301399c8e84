//! Rings: their configuration while stopped (size, addresses, base), starting and
//! stopping them on their workers, their eventfds and enable state.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use log::debug;

use super::{Reply, Result, Session};
use crate::backend::worker::WorkerCommand;
use crate::backend::RequestError;
use crate::device::Device;
use crate::memory::MemoryTable;
use crate::protocol::payload::{RingFd, VringAddr, VringState};
use crate::protocol::{virtio, FrontendRequest as R};
use crate::queue::{Ring, RingAddrs, RingState, Virtqueue};

impl<D: Device> Session<D> {
    /// SET_VRING_NUM: the size of a stopped ring.
    pub(super) fn set_vring_num(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
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

    /// SET_VRING_ADDR: a stopped ring's addresses, checked on arrival against the memory
    /// table (in one region each, aligned); a running ring may only switch used-ring
    /// logging.
    pub(super) fn set_vring_addr(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
        self.need_owner(req)?;
        let addr = VringAddr::decode(body)?;
        let i = self.ring(req, addr.index)?;
        if self.vrings[i].started {
            // A running ring may only switch used-ring logging (migration).
            let same = self.vrings[i]
                .addr
                .is_some_and(|a| (a.desc, a.used, a.avail) == (addr.desc, addr.used, addr.avail));
            if !same {
                return Err(RequestError::BadOrder {
                    request: name,
                    why: "ring is running",
                });
            }
            self.vrings[i].addr = Some(addr);
            self.push_log_state()?;
            return Ok(Reply::Done);
        }
        // A refused SET_VRING_ADDR leaves the ring without addresses, not with old ones.
        self.vrings[i].addr = None;
        if self.mem.is_empty() {
            return Err(RequestError::BadOrder {
                request: name,
                why: "no memory table to place the ring in",
            });
        }
        // The size may still change (SET_VRING_NUM usually comes first): the kick checks
        // the ring again at its final size.
        self.place_ring(&self.mem, &addr, self.vrings[i].num.max(1))?;
        self.vrings[i].addr = Some(addr);
        Ok(Reply::Done)
    }

    /// SET_VRING_BASE: where a stopped ring resumes, checked against its size.
    pub(super) fn set_vring_base(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
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

    /// GET_VRING_BASE: stops the ring and answers where it stopped.
    pub(super) fn get_vring_base(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
        self.need_owner(req)?;
        let s = VringState::decode(name, body)?;
        let i = self.ring(req, s.index)?;
        self.stop_ring(i)?;
        Ok(Reply::Body(
            VringState {
                index: s.index,
                num: self.vrings[i].base,
            }
            .encode(),
        ))
    }

    /// SET_VRING_KICK: starts the ring on its worker.
    pub(super) fn set_vring_kick(
        &mut self,
        req: R,
        body: &[u8],
        mut fds: Vec<File>,
    ) -> Result<Reply> {
        let name = req.name();
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

    /// SET_VRING_CALL and SET_VRING_ERR: the ring's call or err eventfd.
    pub(super) fn set_vring_call_or_err(
        &mut self,
        req: R,
        body: &[u8],
        mut fds: Vec<File>,
    ) -> Result<Reply> {
        let name = req.name();
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
            if let Some(w) = self.worker_for(i) {
                w.send(cmd);
            }
        }
        Ok(Reply::Done)
    }

    /// SET_VRING_ENABLE: enables or disables a ring.
    pub(super) fn set_vring_enable(&mut self, req: R, body: &[u8]) -> Result<Reply> {
        let name = req.name();
        let s = VringState::decode(name, body)?;
        let i = self.ring(req, s.index)?;
        if self.acked_features & virtio::PROTOCOL_FEATURES == 0 && self.acked_features != 0 {
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
        self.set_enabled(i, s.num == 1)?;
        Ok(Reply::Done)
    }

    pub(super) fn set_enabled(&mut self, i: usize, enabled: bool) -> Result<()> {
        self.vrings[i].enabled = enabled;
        if self.vrings[i].started {
            if let Some(w) = self.worker_for(i) {
                w.set_enabled(i as u16, enabled)?;
            }
        }
        Ok(())
    }

    /// Ring `i`'s guest-physical addresses in `mem`, checked for its size and layout.
    pub(super) fn ring_addrs(&self, mem: &MemoryTable, i: usize) -> Result<RingAddrs> {
        let v = &self.vrings[i];
        let addr = v.addr.ok_or(RequestError::BadOrder {
            request: "SET_VRING_KICK",
            why: "ring addresses not set",
        })?;
        self.place_ring(mem, &addr, v.num.max(1))
    }

    /// Translates the frontend's ring addresses into `mem` for a ring of `size` entries
    /// in the negotiated layout, and checks its placement.
    fn place_ring(&self, mem: &MemoryTable, addr: &VringAddr, size: u16) -> Result<RingAddrs> {
        let [desc, avail, used] = Ring::part_lengths(self.packed(), size);
        let addrs = RingAddrs {
            desc: mem.uaddr_to_gpa(addr.desc, desc)?,
            avail: mem.uaddr_to_gpa(addr.avail, avail)?,
            used: mem.uaddr_to_gpa(addr.used, used)?,
        };
        Ring::check_placement(mem, self.packed(), size, &addrs)?;
        Ok(addrs)
    }

    /// Whether the rings use the packed layout (VIRTIO_F_RING_PACKED acked).
    pub(super) fn packed(&self) -> bool {
        self.acked_features & virtio::RING_PACKED != 0
    }

    pub(super) fn start_ring(&mut self, i: usize, kick: File) -> Result<()> {
        if self.vrings[i].started {
            self.stop_ring(i)?;
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
        let mut ring = Ring::new(
            &self.mem,
            num,
            addrs,
            state,
            features & virtio::RING_EVENT_IDX != 0,
            features & virtio::RING_INDIRECT_DESC != 0,
        )?;
        let resumed = self.attach_inflight(i, &mut ring)?;
        let mut vq = Virtqueue::new(i as u16, ring, features & virtio::IN_ORDER != 0)
            .with_name(&self.info.name);
        if resumed {
            // The previous process may have died between publishing a used entry and
            // writing the call eventfd: the driver would wait for that interrupt
            // forever. One extra interrupt is harmless.
            vq.owe_call();
        }
        let log = self.active_log();
        vq.set_ring_log(log.clone().zip(self.used_log_addr(i)));
        vq.set_buffer_log(log);
        vq.set_kick(Some(kick));
        vq.set_call(self.vrings[i].call.clone());
        vq.set_err(self.vrings[i].err.clone());
        vq.set_enabled(self.vrings[i].enabled);
        if let Some(stats) = self.queue_stats.get(i) {
            vq.set_stats(stats.clone());
        }
        let sent = self
            .worker_for(i)
            .is_some_and(|w| w.send(WorkerCommand::Start(Box::new(vq))));
        if !sent {
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

    /// Stops ring `i` on its worker and keeps where it resumes. A worker that does not
    /// answer in time is an error that ends the connection.
    pub(super) fn stop_ring(&mut self, i: usize) -> Result<()> {
        if !self.vrings[i].started {
            return Ok(());
        }
        let stopped = match self.worker_for(i) {
            Some(w) => w.stop_queue(i as u16)?,
            None => None,
        };
        if let Some(state) = stopped {
            self.vrings[i].base = state.encode();
        }
        self.vrings[i].started = false;
        debug!(
            "{}: ring {i} stopped at {:#x}",
            self.info.name, self.vrings[i].base
        );
        Ok(())
    }
}

/// Refuses an fd that is not an eventfd. `/proc/self/fd` names the kind of anonymous
/// inode; without `/proc` (a chroot sandbox) the fd must at least be an anonymous inode
/// (no file type: not a socket, pipe, file or device).
fn check_eventfd(request: &'static str, f: &File) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let link = match std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())) {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(_) => match f.metadata() {
            Ok(m) if m.mode() & nix::libc::S_IFMT == 0 => return Ok(()),
            Ok(m) => format!("mode {:#o}", m.mode()),
            Err(e) => e.to_string(),
        },
    };
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
