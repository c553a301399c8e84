//! Everything a device author needs, in one import.
//!
//! ```
//! use vhost_user_sync::prelude::*;
//!
//! struct Zeroes;
//! struct ZeroesWorker;
//!
//! impl Device for Zeroes {
//!     type Worker = ZeroesWorker;
//!     fn info(&self) -> DeviceInfo {
//!         DeviceInfo::new("zeroes", 0xffff, 1)
//!     }
//!     fn create_worker(&mut self, _index: usize) -> std::io::Result<ZeroesWorker> {
//!         Ok(ZeroesWorker)
//!     }
//! }
//!
//! impl QueueWorker for ZeroesWorker {
//!     fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
//!         while let Some(chain) = queue.pop() {
//!             let n = chain.writer(queue.mem()).write(&vec![0; chain.writable_len() as usize])?;
//!             queue.add_used(&chain, n as u32)?;
//!         }
//!         Ok(())
//!     }
//! }
//! ```
//!
//! It holds the two traits and what their methods take and return (the device API),
//! the listener that serves a device, and shutdown on signals. The ring machinery
//! behind a [`Queue`] (`queue::Virtqueue`, the ring layouts, their test hooks) and the
//! frontend side are not in it: import them from their modules when you need them.

pub use crate::backend::{BackendChannel, Shutdown};
pub use crate::device::{
    Device, DeviceError, DeviceInfo, FdRegistry, Queue, QueueWorker, Queues, MAX_DEVICE_TOKEN,
};
pub use crate::memory::MemoryTable;
pub use crate::protocol::virtio;
pub use crate::queue::{ChainReader, ChainWriter, DescriptorChain, QueueError};
pub use crate::sandbox::{PathAccess, SandboxNeeds};
pub use crate::sys::unix::shutdown_on_signals;
pub use crate::VhostUserListener;
/// `Read` and `Write` (for [`ChainReader`] and [`ChainWriter`]), in scope without
/// their names.
pub use std::io::{Read as _, Write as _};
