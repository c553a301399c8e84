//! The frontend half of the protocol: what a VMM does to drive a vhost-user backend.
//! Used by non-async VMMs, by the test suite and by the benchmark tool.
//!
//! # Example
//! ```no_run
//! use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
//! let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
//! let mut fe = Frontend::connect("/tmp/rng.sock").unwrap();
//! fe.negotiate(u64::MAX, u64::MAX).unwrap();
//! fe.set_mem_table(&mem).unwrap();
//! let mut q = DriverQueue::new(&mem, 0, 64).unwrap();
//! q.attach(&mut fe, &mem).unwrap();
//! let buf = mem.alloc(64, 8).unwrap();
//! q.add(mem.table(), &[(buf, 64, true)]).unwrap();
//! q.kick(mem.table()).unwrap();
//! q.wait_used(mem.table(), std::time::Duration::from_secs(5)).unwrap();
//! ```

mod driver_queue;
mod frontend_error;
mod frontend_memory;
pub(crate) mod packed_driver;
mod vhost_frontend;

pub use driver_queue::{DriverQueue, UsedElem};
pub use frontend_error::FrontendError;
pub use frontend_memory::FrontendMemory;
pub use vhost_frontend::Frontend;
