//! Platform code: unix domain sockets and the endpoints frontends come from, fds,
//! signals and the shutdown trigger they wake, the SIGBUS guard over shared mappings,
//! the sockets a service manager passes, returning freed memory to the kernel, and the
//! sandbox's process, namespace, privilege and seccomp calls (`sandbox/`).

mod connection_error;
mod endpoint;
mod fault_guard;
mod free_memory;
pub mod sandbox;

mod shutdown;
mod signals;
mod socket;
mod socket_activation;

pub use connection_error::ConnectionError;
pub use endpoint::{Endpoint, EndpointError, ParentResources, DEFAULT_SOCKET_MODE};
pub use fault_guard::{FaultGuard, FaultNotice, MAX_GUARDED};
pub use free_memory::release_free_memory;
pub use shutdown::Shutdown;

pub use signals::shutdown_on_signals;
pub use socket::SocketPlatformConnection;
pub use socket_activation::{listen_fds, LISTEN_FDS_START, MAX_LISTEN_FDS};
