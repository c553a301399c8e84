//! Platform code: unix domain sockets and the endpoints frontends come from, fds,
//! signals and the shutdown trigger they wake, and the SIGBUS guard over shared mappings.

mod connection_error;
mod endpoint;
mod fault_guard;

mod shutdown;
mod signals;
mod socket;

pub use connection_error::ConnectionError;
pub use endpoint::{Endpoint, EndpointError, ParentResources, DEFAULT_SOCKET_MODE};
pub use fault_guard::{FaultGuard, FaultNotice, MAX_GUARDED};
pub use shutdown::Shutdown;

pub use signals::shutdown_on_signals;
pub use socket::SocketPlatformConnection;
