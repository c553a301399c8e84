//! Entering new namespaces: mount, pid, ipc and (unless the device needs the host's)
//! network, through an unprivileged user namespace when not root.

use std::io;

use nix::sched::{unshare, CloneFlags};
use nix::unistd::{getegid, geteuid};

/// Which namespaces a confined process got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespaces {
    /// A user namespace was needed (not root): the process is root only inside it.
    pub user: bool,
    /// A network namespace (no interfaces but loopback).
    pub network: bool,
}

/// Unshares mount, pid, ipc and (if `network`) network namespaces. As root that is
/// all; otherwise a user namespace comes first, mapping the caller's uid and gid to 0
/// inside it. The calling process stays in its pid namespace: its next child is pid 1
/// of the new one.
pub fn enter(network: bool) -> io::Result<Namespaces> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC;
    if network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let (uid, gid) = (geteuid(), getegid());
    if uid.is_root() && unshare(flags).is_ok() {
        return Ok(Namespaces {
            user: false,
            network,
        });
    }
    unshare(flags | CloneFlags::CLONE_NEWUSER).map_err(io::Error::from)?;
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    Ok(Namespaces {
        user: true,
        network,
    })
}
