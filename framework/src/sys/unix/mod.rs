//! Platform code: unix domain sockets and the endpoints frontends come from, fds,
//! signals and the shutdown trigger they wake.

mod connection_error;
mod endpoint;

mod shutdown;
mod signals;
mod socket;

pub use connection_error::ConnectionError;
pub use endpoint::{Endpoint, EndpointError, ParentResources, DEFAULT_SOCKET_MODE};
pub use shutdown::Shutdown;

pub use signals::shutdown_on_signals;
pub use socket::SocketPlatformConnection;
