//! virtio-rng over vhost-user: the guest's entropy requests are filled from the host.
//!
//! The rooms of every device crate: [`device`] (what the frontend sees), [`worker`]
//! (queue events), [`request`] (what a request is), [`metrics`], [`persistence`].

pub mod device;
pub mod metrics;
pub mod persistence;
pub mod request;
pub mod worker;

pub use device::RngDevice;
pub use metrics::RngMetrics;
