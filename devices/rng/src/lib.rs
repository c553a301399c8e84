//! virtio-rng over vhost-user: the guest's entropy requests are filled from the host.
//!
//! The rooms of every device crate: [`device`] (what the frontend sees), [`worker`]
//! (queue events), [`request`] (what a request is), [`metrics`], [`persistence`]. Here
//! also [`drbg`], the generator that serves the bytes (a ChaCha20 keystream,
//! [`keystream`], keyed from the host's entropy source), unless the device is told to
//! pass the source through.

pub mod device;
pub mod drbg;
pub mod keystream;
pub mod metrics;
pub mod persistence;
pub mod request;
pub mod sandbox;
pub mod worker;

pub use device::RngDevice;
pub use metrics::RngMetrics;
