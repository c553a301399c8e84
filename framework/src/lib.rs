//! vhost-user-sync: vhost-user device backends as plain blocking Rust.
//!
//! A device implements [`device::Device`] and [`device::QueueWorker`]; a
//! [`VhostUserListener`] serves it to frontends (QEMU, cloud-hypervisor, DPDK
//! virtio-user, ...). The [`frontend`] module is the other side of the protocol, for
//! VMMs, tests and load generators. A device needs only [`prelude`]:
//! `use vhost_user_sync::prelude::*;`.
#![warn(missing_docs)]

pub mod backend;
pub mod device;
pub mod memory;
pub mod message;
pub mod prelude;
pub mod protocol;
pub mod queue;
pub mod sandbox;
pub mod sys;

pub use backend::VhostUserListener;
pub mod frontend;
