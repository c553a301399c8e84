//! `SandboxNeeds`: what a device declares it needs inside a sandbox.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::Capability;

/// How a path bound into the sandbox's root may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathAccess {
    /// Mounted read-only.
    ReadOnly,
    /// Mounted read-write.
    ReadWrite,
}

/// What a device needs beyond the framework's own allowlist: system calls, host paths,
/// capabilities, and whether it must stay in the host's network namespace.
///
/// A device crate publishes one of these (for example `BlkDevice::sandbox_needs`); the
/// [`Sandbox`](super::Sandbox) adds the framework's system calls, builds the root and the
/// seccomp filter from it. A device author never writes BPF.
///
/// # Example
/// ```
/// use vhost_user_sync::sandbox::{Capability, PathAccess, SandboxNeeds};
/// let needs = SandboxNeeds::new()
///     .syscalls(&[nix::libc::SYS_pread64, nix::libc::SYS_pwrite64, nix::libc::SYS_fdatasync])
///     .path("/var/lib/images/disk.img", PathAccess::ReadWrite)
///     .capability(Capability::NET_ADMIN)
///     .host_network();
/// assert!(needs.allows(nix::libc::SYS_pread64));
/// assert!(needs.keeps_host_network());
/// ```
#[derive(Debug, Clone, Default)]
pub struct SandboxNeeds {
    syscalls: BTreeSet<i64>,
    paths: Vec<(PathBuf, PathAccess)>,
    capabilities: BTreeSet<Capability>,
    host_network: bool,
}

impl SandboxNeeds {
    /// Nothing beyond the framework's own needs.
    pub fn new() -> Self {
        SandboxNeeds::default()
    }

    /// Adds system calls (numbers as `libc::SYS_*`).
    pub fn syscalls(mut self, numbers: &[i64]) -> Self {
        self.syscalls.extend(numbers.iter().copied());
        self
    }

    /// Makes the host file or directory at `path` (absolute) available at the same path
    /// inside the sandbox's root.
    pub fn path(mut self, path: impl Into<PathBuf>, access: PathAccess) -> Self {
        self.paths.push((path.into(), access));
        self
    }

    /// Keeps `capability` (all others are dropped).
    pub fn capability(mut self, capability: Capability) -> Self {
        self.capabilities.insert(capability);
        self
    }

    /// Stays in the host's network namespace (a device that names host interfaces, such
    /// as a tap whose MTU it reads).
    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }

    /// Adds everything `other` needs.
    pub fn merge(mut self, other: &SandboxNeeds) -> Self {
        self.syscalls.extend(other.syscalls.iter().copied());
        self.paths.extend(other.paths.iter().cloned());
        self.capabilities.extend(other.capabilities.iter().copied());
        self.host_network |= other.host_network;
        self
    }

    /// Whether system call `number` is on the list.
    pub fn allows(&self, number: i64) -> bool {
        self.syscalls.contains(&number)
    }

    /// The system calls declared.
    pub fn syscall_set(&self) -> &BTreeSet<i64> {
        &self.syscalls
    }

    /// The paths declared, in order.
    pub fn paths(&self) -> impl Iterator<Item = (&Path, PathAccess)> {
        self.paths.iter().map(|(p, a)| (p.as_path(), *a))
    }

    /// The capabilities kept.
    pub fn capabilities(&self) -> &BTreeSet<Capability> {
        &self.capabilities
    }

    /// Whether the device stays in the host's network namespace.
    pub fn keeps_host_network(&self) -> bool {
        self.host_network
    }
}
