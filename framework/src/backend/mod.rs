//! The backend side: serving a [`crate::device::Device`] to a frontend.
//!
//! A connection thread ([`serve_connection`]) owns the socket and the protocol state;
//! worker threads own the queues and the device's data path. [`VhostUserListener`] is
//! the serve loop over an [`Endpoint`](crate::sys::unix::Endpoint).

mod backend_channel;
mod connection;
mod device_stats;
mod listener;
mod listener_error;
mod request_error;
mod serve_options;
mod session;
mod shared_acceptor;
pub mod state_stream;
mod vring_config;
mod worker;

pub use crate::sys::unix::Shutdown;
pub use backend_channel::BackendChannel;
pub use connection::{serve_connection, serve_connection_with, ServeError};
pub use device_stats::{DeviceSnapshot, DeviceStats};
pub use listener::VhostUserListener;
pub use listener_error::ListenerError;
pub use request_error::RequestError;
pub use serve_options::ServeOptions;
pub use session::{FRAMEWORK_PROTOCOL_FEATURES, TRANSPORT_FEATURES};
pub use worker::WorkerStuck;
