//! vhost-user-sync: vhost-user device backends as plain blocking Rust.
//!
//! A device implements [`device::Device`] and [`device::QueueWorker`]; a
//! [`VhostUserListener`] serves it to frontends (QEMU, cloud-hypervisor, DPDK
//! virtio-user, ...). The [`frontend`] module is the other side of the protocol, for
//! VMMs, tests and load generators.
#![warn(missing_docs)]

pub mod backend;
pub mod device;
pub mod memory;
pub mod message;
pub mod protocol;
pub mod queue;
pub mod sys;

pub use sys::unix::VhostUserListener;
pub mod frontend;
