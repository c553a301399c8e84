//! Platform side of the sandbox: forking the confined child, what it does to itself
//! before it serves, and supervising it.

mod fds;
mod framework_syscalls;
mod namespaces;
mod private_root;
mod privileges;
mod seccomp_filter;
mod supervision;

pub use fds::close_all_except;
pub use privileges::effective_capabilities;
pub(crate) use supervision::{probe_strongest, spawn_confined, supervise, wait_child};
