//! What the net device needs in a sandbox. The taps are opened before the device
//! process is confined; a tap device stays in the host's network namespace, where its
//! interface is: the worker reads its MTU through an `AF_INET` socket by name and
//! watches its link state on a netlink socket bound to the link group.

use nix::libc;
use vhost_user_sync::sandbox::SandboxNeeds;

use crate::device::NetBackend;

/// For a tap: the host's network and any socket; the null backend needs nothing more.
pub fn needs(backend: &NetBackend) -> SandboxNeeds {
    match backend {
        NetBackend::Tap(_) => SandboxNeeds::new()
            .syscalls(&[libc::SYS_socket, libc::SYS_bind])
            .host_network(),
        NetBackend::Null { .. } => SandboxNeeds::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_tap_keeps_the_host_network() {
        let null = needs(&NetBackend::Null { frame_len: 64 });
        assert!(!null.keeps_host_network());
        assert!(!null.allows(libc::SYS_socket));
        let tap = needs(&NetBackend::Tap(Vec::new()));
        assert!(tap.keeps_host_network());
        assert!(tap.allows(libc::SYS_socket));
    }
}
