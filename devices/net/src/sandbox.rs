//! What the net device needs in a sandbox. The taps are opened before the device
//! process is confined; a tap device stays in the host's network namespace, where its
//! interface is: the worker reads its MTU through an `AF_INET` socket by name and
//! watches its link state on a netlink socket bound to the link group.

use nix::libc;
use vhost_user_sync::sandbox::SandboxNeeds;

use crate::device::{NetBackend, TapIo};

/// For a tap: the host's network and any socket, and io_uring unless frames go out one
/// `writev` at a time; the null backend needs nothing more.
pub fn needs(backend: &NetBackend, tap_io: TapIo) -> SandboxNeeds {
    match (backend, tap_io) {
        (NetBackend::Tap(_), TapIo::Sync) => SandboxNeeds::new()
            .syscalls(&[libc::SYS_socket, libc::SYS_bind])
            .host_network(),
        (NetBackend::Tap(_), TapIo::IoUring) => needs(backend, TapIo::Sync).syscalls(&[
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ]),
        (NetBackend::Null { .. }, _) => SandboxNeeds::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_tap_keeps_the_host_network() {
        let null = needs(&NetBackend::Null { frame_len: 64 }, TapIo::IoUring);
        assert!(!null.keeps_host_network());
        assert!(!null.allows(libc::SYS_socket));
        assert!(!null.allows(libc::SYS_io_uring_enter));
        let tap = needs(&NetBackend::Tap(Vec::new()), TapIo::Sync);
        assert!(tap.keeps_host_network());
        assert!(tap.allows(libc::SYS_socket));
        assert!(!tap.allows(libc::SYS_io_uring_enter));
    }

    #[test]
    fn a_tap_written_through_io_uring_may_use_it() {
        let tap = needs(&NetBackend::Tap(Vec::new()), TapIo::IoUring);
        assert!(tap.keeps_host_network());
        for call in [
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ] {
            assert!(tap.allows(call));
        }
    }
}
