//! virtio-net over vhost-user: frames between the guest and a host tap device (or a null
//! sink/source for measuring the ring path alone).
//!
//! The rooms of every device crate: [`device`] (what the frontend sees), [`worker`]
//! (queue and tap events), [`request`] (headers and control commands, validated),
//! [`metrics`], [`persistence`]; plus [`tap`], the host side.

pub mod device;
pub mod features;
pub mod link;
pub mod metrics;
pub mod persistence;
pub mod request;
pub mod sandbox;
pub mod tap;
mod tap_ring;
pub mod worker;

pub use device::{NetBackend, NetConfig, NetDevice, TapIo};
pub use metrics::{NetCounters, NetMetrics};
