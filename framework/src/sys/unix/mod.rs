//! Unix domain socket transport.

mod connection_error;
mod listener;

mod signals;
mod socket;

pub use connection_error::ConnectionError;
pub use listener::{ListenerError, ParentResources, VhostUserListener};

pub use signals::shutdown_on_signals;
pub use socket::SocketPlatformConnection;
