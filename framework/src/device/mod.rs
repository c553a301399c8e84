//! What a device author implements: [`Device`] (control plane, on the connection
//! thread) and [`QueueWorker`] (data path, on a worker thread).
//!
//! A complete device, entropy from the host, fits in a few lines:
//!
//! ```
//! use std::fs::File;
//! use std::os::fd::AsFd;
//! use vhost_user_sync::device::{Device, DeviceError, DeviceInfo, Queue, QueueWorker};
//!
//! struct Rng;
//! struct RngWorker(File);
//!
//! impl Device for Rng {
//!     type Worker = RngWorker;
//!     fn info(&self) -> DeviceInfo {
//!         DeviceInfo::new("rng", 4, 1)
//!     }
//!     fn create_worker(&mut self, _index: usize) -> std::io::Result<RngWorker> {
//!         Ok(RngWorker(File::open("/dev/urandom")?))
//!     }
//! }
//!
//! impl QueueWorker for RngWorker {
//!     fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
//!         while let Some(chain) = queue.pop() {
//!             let len = chain.writable_len() as usize;
//!             let n = chain.writer(queue.mem()).read_from_fd(self.0.as_fd(), len)?;
//!             queue.add_used(&chain, n as u32)?;
//!         }
//!         Ok(())
//!     }
//! }
//! ```

mod device_error;
mod device_info;
pub(crate) mod fd_registry;
mod queue;
pub(crate) mod queues;

pub use device_error::DeviceError;
pub use device_info::DeviceInfo;
pub use fd_registry::{FdRegistry, MAX_DEVICE_TOKEN};
pub use queue::Queue;
pub use queues::Queues;

use std::io;

use crate::backend::BackendChannel;

/// A virtio device served over vhost-user: its description, config space and the
/// workers that run its queues.
///
/// One value serves one frontend connection; a listener's serve loop builds a fresh one
/// for each connection. The methods run on the connection thread.
pub trait Device: Send + 'static {
    /// The data-path state of one worker thread.
    type Worker: QueueWorker;

    /// Name, queue count and size, and feature bits.
    fn info(&self) -> DeviceInfo;

    /// Fills `data` from the config space at `offset` (bytes past the end stay zero).
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let _ = (offset, data);
    }

    /// Writes the config space. The default refuses: the config space is read-only.
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), DeviceError> {
        let _ = data;
        Err(DeviceError::ReadOnlyConfig { offset })
    }

    /// Called when the frontend acks features (device bits and transport bits).
    fn set_features(&mut self, features: u64) {
        let _ = features;
    }

    /// How many worker threads to run (queues are spread with [`Self::queue_worker`]).
    fn worker_count(&self) -> usize {
        1
    }

    /// Which worker runs queue `queue`.
    fn queue_worker(&self, queue: u16) -> usize {
        let _ = queue;
        0
    }

    /// Builds the data-path state of worker `index` for a new connection.
    fn create_worker(&mut self, index: usize) -> io::Result<Self::Worker>;

    /// The frontend gave a channel for backend-initiated requests (BACKEND_REQ).
    fn set_backend_channel(&mut self, channel: BackendChannel) {
        let _ = channel;
    }

    /// The frontend reset the device (RESET_DEVICE / RESET_OWNER): forget negotiated
    /// state. Workers are rebuilt afterwards.
    fn reset(&mut self) {}

    /// SET_STATUS (with the STATUS protocol feature): the driver's virtio device status
    /// byte (ACKNOWLEDGE 1, DRIVER 2, DRIVER_OK 4, FEATURES_OK 8, ...; 0 when the driver
    /// resets the device). The framework keeps it and answers GET_STATUS itself; this
    /// tells the device, for example to know when the driver is ready.
    fn set_status(&mut self, status: u8) {
        let _ = status;
    }

    /// NET_SET_MTU (with the MTU protocol feature). The default refuses.
    fn set_mtu(&mut self, mtu: u16) -> Result<(), DeviceError> {
        Err(DeviceError::Other(format!(
            "NET_SET_MTU {mtu} not supported by this device"
        )))
    }

    /// Saves what only the backend knows of the device (the frontend saves the rings
    /// itself), for SET_DEVICE_STATE_FD in the stopped phase: every ring is stopped and
    /// its workers hold no request. Called on the connection thread; the framework wraps
    /// the bytes in a versioned, checksummed envelope and writes them to the frontend's
    /// pipe on a thread of its own. Offered when [`DeviceInfo::with_device_state`] is set.
    /// Never put secrets (keys) in it: the frontend stores it.
    fn save_state(&mut self) -> Result<Vec<u8>, DeviceError> {
        Err(DeviceError::Other(
            "this device has no state to save".into(),
        ))
    }

    /// Loads state [`Self::save_state`] made (perhaps in another process, or another
    /// build of the device), when the frontend's CHECK_DEVICE_STATE follows the transfer.
    /// The envelope has been checked; the payload is untrusted still: validate all of it
    /// before changing anything, so that a refused state leaves the device as it was.
    fn load_state(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        let _ = state;
        Err(DeviceError::Other(
            "this device has no state to load".into(),
        ))
    }

    /// What the device needs inside a sandbox beyond the framework's own system calls
    /// (see [`crate::sandbox`]): more system calls, host paths, capabilities, the host's
    /// network namespace. Asked once, of a device made for the purpose, before the
    /// device process is confined. The default: nothing more.
    fn sandbox_needs(&self) -> crate::sandbox::SandboxNeeds {
        crate::sandbox::SandboxNeeds::new()
    }

    /// SEND_RARP (with the RARP protocol feature): announce `mac` after migration. The
    /// default refuses.
    fn send_rarp(&mut self, mac: [u8; 6]) -> Result<(), DeviceError> {
        let _ = mac;
        Err(DeviceError::Other(
            "SEND_RARP not supported by this device".into(),
        ))
    }
}

/// The data path of a device: runs on a worker thread and owns its state there, so
/// device code needs no locks.
pub trait QueueWorker: Send + 'static {
    /// A started, enabled queue has work (a kick arrived, or it was just started).
    /// Pop chains, use them, add used entries; the framework signals the guest after
    /// this returns, following EVENT_IDX / NO_INTERRUPT.
    fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError>;

    /// Registers the worker's own fds (a tap, a socket, a timer) with tokens of its
    /// choosing; [`Self::handle_event`] gets the token when one is ready.
    fn register_fds(&mut self, registry: &mut FdRegistry<'_>) -> io::Result<()> {
        let _ = registry;
        Ok(())
    }

    /// One of the worker's own fds is ready.
    fn handle_event(&mut self, token: usize, queues: &mut Queues<'_>) -> Result<(), DeviceError> {
        let _ = (token, queues);
        Ok(())
    }

    /// Queue `queue.index()` is about to stop (GET_VRING_BASE, a restart, a reset): the
    /// last chance to use the chains the device holds from it, for a device whose requests
    /// are still running elsewhere (I/O submitted to the kernel). Wait for them and use
    /// them here, so the ring stops consistent and nothing writes into guest memory after
    /// the frontend was told where the ring stands. The connection's wait for the stop is
    /// bounded (`ServeOptions::worker_timeout`). Whatever is still held afterwards is
    /// accounted for as [`Self::queue_state_changed`] describes.
    fn queue_stopping(&mut self, queue: &mut Queue<'_>) {
        let _ = queue;
    }

    /// Queue `index` was started or stopped (GET_VRING_BASE). Chains the device still
    /// holds from the queue are no longer accepted once it stopped: drop them (the
    /// framework has accounted for them: unused ones are read again after a restart).
    fn queue_state_changed(&mut self, index: u16, running: bool) {
        let _ = (index, running);
    }

    /// Saves what only this worker knows (a sequence number, a position in a stream),
    /// for SET_DEVICE_STATE_FD in the stopped phase: every ring is stopped, so nothing
    /// runs on the worker meanwhile. Called on the worker's thread; the bytes travel in
    /// the same checked envelope as [`Device::save_state`]'s, one section per worker.
    /// The default saves nothing. Never put secrets in it: the frontend stores it.
    ///
    /// ```
    /// use vhost_user_sync::prelude::*;
    ///
    /// /// Numbers every reply; the numbering goes on after a migration.
    /// struct Numbering {
    ///     next: u64,
    /// }
    ///
    /// impl QueueWorker for Numbering {
    ///     fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
    ///         while let Some(chain) = queue.pop() {
    ///             let n = chain.writer(queue.mem()).write(&self.next.to_le_bytes())?;
    ///             self.next += 1;
    ///             queue.add_used(&chain, n as u32)?;
    ///         }
    ///         Ok(())
    ///     }
    ///     fn save_state(&mut self) -> Result<Vec<u8>, DeviceError> {
    ///         Ok(self.next.to_le_bytes().to_vec())
    ///     }
    ///     fn check_state(&self, state: &[u8]) -> Result<(), DeviceError> {
    ///         match state.len() {
    ///             8 => Ok(()),
    ///             n => Err(DeviceError::Other(format!("numbering state of {n} bytes"))),
    ///         }
    ///     }
    ///     fn load_state(&mut self, state: &[u8]) {
    ///         if let Ok(bytes) = state.try_into() {
    ///             self.next = u64::from_le_bytes(bytes);
    ///         }
    ///     }
    /// }
    ///
    /// let mut a = Numbering { next: 41 };
    /// let saved = a.save_state().unwrap();
    /// let mut b = Numbering { next: 0 };
    /// b.check_state(&saved).unwrap();
    /// b.load_state(&saved);
    /// assert_eq!(b.next, 41);
    /// assert!(b.check_state(b"short").is_err());
    /// ```
    fn save_state(&mut self) -> Result<Vec<u8>, DeviceError> {
        Ok(Vec::new())
    }

    /// Checks a state [`Self::save_state`] made (perhaps in another process), without
    /// changing anything: the bytes come from the frontend. Called on the worker's
    /// thread, for every worker, before [`Device::load_state`]; only when every part of
    /// the state is accepted is any of it loaded. The default accepts only an empty
    /// state.
    fn check_state(&self, state: &[u8]) -> Result<(), DeviceError> {
        match state.len() {
            0 => Ok(()),
            n => Err(DeviceError::Other(format!(
                "this worker keeps no state, and was sent {n} bytes of it"
            ))),
        }
    }

    /// Takes a state [`Self::check_state`] accepted, before any of the worker's rings
    /// starts again.
    fn load_state(&mut self, state: &[u8]) {
        let _ = state;
    }
}
