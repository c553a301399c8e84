//! virtio-blk over vhost-user: a raw image file (or a host block device) as the guest's
//! disk, with requests going straight between guest memory and the file.
//!
//! The rooms of every device crate: [`device`] (what the frontend sees), [`worker`]
//! (queue events), [`request`] (request headers and segments, validated), [`metrics`],
//! [`persistence`]; plus [`disk`], the host side.

pub mod device;
pub mod disk;
pub mod features;
pub mod image_lock;
pub mod metrics;
pub mod persistence;
pub mod request;
pub mod sandbox;
mod uring;
pub mod worker;

pub use device::{Aio, BlkConfig, BlkDevice};
pub use disk::{DiskImage, DiskOptions};
pub use metrics::{BlkCounters, BlkMetrics};
pub use uring::probe_io_uring;
