//! SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE: the device's own state, and each of its
//! workers', through the frontend's pipe. The bytes move on a thread of their own, so
//! the connection keeps answering while a frontend is slow to read or write;
//! CHECK_DEVICE_STATE waits for that thread and, after a load, has every worker check
//! its part before the device loads its own and the workers take theirs.

use std::fs::File;
use std::io::{Read, Write};
use std::thread::JoinHandle;

use log::{info, warn};

use super::{u64_reply, Reply, Result, Session};
use crate::backend::state_stream::{self, StateParts, MAX_PAYLOAD, OVERHEAD};
use crate::backend::RequestError;
use crate::device::{Device, DeviceError};
use crate::protocol::payload::DeviceStateTransfer;
use crate::protocol::{FrontendRequest as R, ProtocolFeatures as P};

/// SET_DEVICE_STATE_FD's reply: success, and bit 8: no fd of ours in return.
const NO_FD_RETURNED: u64 = 1 << 8;

/// A transfer under way, or finished and not yet checked.
#[derive(Default)]
pub(crate) enum Transfer {
    /// None since the last CHECK_DEVICE_STATE.
    #[default]
    Idle,
    /// Writing the saved state to the frontend's pipe.
    Saving(JoinHandle<std::io::Result<usize>>),
    /// Reading a state from the frontend's pipe.
    Loading(JoinHandle<std::result::Result<Vec<u8>, String>>),
}

impl<D: Device> Session<D> {
    pub(super) fn set_device_state_fd(
        &mut self,
        req: R,
        body: &[u8],
        fds: Vec<File>,
    ) -> Result<Reply> {
        self.need(req, P::DEVICE_STATE, "DEVICE_STATE")?;
        let t = DeviceStateTransfer::decode(body)?;
        if let Some(i) = self.vrings.iter().position(|v| v.started) {
            return Err(RequestError::BadOrder {
                request: req.name(),
                why: if i == 0 {
                    "ring 0 is running: the stopped phase needs every ring stopped"
                } else {
                    "a ring is running: the stopped phase needs every ring stopped"
                },
            });
        }
        let Some(pipe) = fds.into_iter().next() else {
            return Err(RequestError::BadOrder {
                request: req.name(),
                why: "no fd",
            });
        };
        if !matches!(self.transfer, Transfer::Idle) {
            warn!(
                "{}: a new device state transfer replaces one that was never checked",
                self.info.name
            );
            self.finish_transfer();
        }
        let name = self.info.name.clone();
        self.transfer = if t.direction == 0 {
            let device = self.device.save_state()?;
            let mut workers = Vec::with_capacity(self.workers.len());
            for (i, w) in self.workers.iter().enumerate() {
                let part = w.save_state()?.map_err(|why| {
                    DeviceError::Other(format!("worker {i} could not save its state: {why}"))
                })?;
                workers.push(part);
            }
            let stream = state_stream::encode_parts(&device, &workers);
            let spawned = std::thread::Builder::new()
                .name("device-state".into())
                .spawn(move || {
                    let mut pipe = pipe;
                    pipe.write_all(&stream)?;
                    Ok(stream.len())
                });
            Transfer::Saving(spawned.map_err(|source| RequestError::NoThread {
                request: req.name(),
                source,
            })?)
        } else {
            let spawned = std::thread::Builder::new()
                .name("device-state".into())
                .spawn(move || read_bounded(pipe, &name));
            Transfer::Loading(spawned.map_err(|source| RequestError::NoThread {
                request: req.name(),
                source,
            })?)
        };
        u64_reply(NO_FD_RETURNED)
    }

    pub(super) fn check_device_state(&mut self, req: R) -> Result<Reply> {
        self.need(req, P::DEVICE_STATE, "DEVICE_STATE")?;
        match std::mem::take(&mut self.transfer) {
            Transfer::Idle => Err(RequestError::BadOrder {
                request: req.name(),
                why: "no device state transfer to check",
            }),
            Transfer::Saving(t) => match t.join() {
                Ok(Ok(n)) => {
                    info!("{}: device state saved ({n} bytes)", self.info.name);
                    u64_reply(0)
                }
                Ok(Err(e)) => {
                    warn!("{}: writing the device state failed: {e}", self.info.name);
                    u64_reply(1)
                }
                Err(_) => u64_reply(1),
            },
            Transfer::Loading(t) => {
                let stream = match t.join() {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        warn!("{}: reading the device state failed: {e}", self.info.name);
                        return u64_reply(1);
                    }
                    Err(_) => return u64_reply(1),
                };
                let loaded = match state_stream::decode(&stream) {
                    Ok(parts) => self.load_parts(&parts)?,
                    Err(e) => Err(e.to_string()),
                };
                match loaded {
                    Ok(()) => {
                        info!(
                            "{}: device state loaded ({} bytes)",
                            self.info.name,
                            stream.len()
                        );
                        u64_reply(0)
                    }
                    Err(e) => {
                        warn!(
                            "{}: device state refused, the device is as it was: {e}",
                            self.info.name
                        );
                        u64_reply(1)
                    }
                }
            }
        }
    }

    /// Loads a checked stream's parts: each worker checks its section, then the device
    /// loads its own part, then the workers take theirs; a refusal anywhere (the answer's
    /// inner error) leaves the device and every worker as they were. A stream without
    /// worker sections leaves the workers as they are. A worker that does not answer
    /// ends the connection.
    fn load_parts(&mut self, parts: &StateParts<'_>) -> Result<std::result::Result<(), String>> {
        let (sections, workers) = (parts.workers.len(), self.workers.len());
        if sections != 0 && sections != workers {
            return Ok(Err(format!(
                "the state has {sections} worker sections, this device runs {workers} workers"
            )));
        }
        for (i, (w, part)) in self.workers.iter().zip(&parts.workers).enumerate() {
            if let Err(why) = w.check_state(part)? {
                return Ok(Err(format!("worker {i}: {why}")));
            }
        }
        if let Err(e) = self.device.load_state(parts.device) {
            return Ok(Err(e.to_string()));
        }
        for (w, part) in self.workers.iter().zip(&parts.workers) {
            w.load_state(part)?;
        }
        Ok(Ok(()))
    }

    /// Waits for a transfer thread that will not be checked (the session ends, or a new
    /// transfer replaces it). It ends by itself: the frontend closes its end of the pipe
    /// or the write fails once the frontend is gone.
    pub(super) fn finish_transfer(&mut self) {
        match std::mem::take(&mut self.transfer) {
            Transfer::Idle => {}
            Transfer::Saving(t) => drop(t.join()),
            Transfer::Loading(t) => drop(t.join()),
        }
    }
}

/// Reads the frontend's pipe to its end, refusing more than a whole envelope may hold.
fn read_bounded(pipe: File, device: &str) -> std::result::Result<Vec<u8>, String> {
    let limit = (MAX_PAYLOAD + OVERHEAD) as u64;
    let mut stream = Vec::new();
    pipe.take(limit + 1)
        .read_to_end(&mut stream)
        .map_err(|e| format!("{device}: {e}"))?;
    if stream.len() as u64 > limit {
        return Err(format!(
            "{device}: more than {limit} bytes of device state: refused"
        ));
    }
    Ok(stream)
}
