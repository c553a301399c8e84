//! `Capability`: a Linux capability a sandboxed device keeps.

use std::fmt;

/// A Linux capability by its number (`capabilities(7)`).
///
/// # Example
/// ```
/// use vhost_user_sync::sandbox::Capability;
/// assert_eq!(Capability::NET_ADMIN.number(), 12);
/// assert_eq!(Capability::NET_ADMIN.to_string(), "CAP_NET_ADMIN");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Capability(u32);

impl Capability {
    /// Bypass file read, write and execute permission checks.
    pub const DAC_OVERRIDE: Capability = Capability(1);
    /// Make arbitrary changes to file UIDs and GIDs.
    pub const CHOWN: Capability = Capability(0);
    /// Network administration (create a tap, set its offloads on a shared queue).
    pub const NET_ADMIN: Capability = Capability(12);
    /// Use raw sockets.
    pub const NET_RAW: Capability = Capability(13);
    /// Lock memory (`mlock`, `MAP_LOCKED`).
    pub const IPC_LOCK: Capability = Capability(14);
    /// Raise the resource limits (more locked memory, more open files).
    pub const SYS_RESOURCE: Capability = Capability(24);
    /// Set real-time and other scheduling priorities.
    pub const SYS_NICE: Capability = Capability(23);

    /// The capability with number `n` (0 to 63).
    pub const fn from_number(n: u32) -> Option<Capability> {
        if n < 64 {
            Some(Capability(n))
        } else {
            None
        }
    }

    /// Its number.
    pub const fn number(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            0 => "CAP_CHOWN",
            1 => "CAP_DAC_OVERRIDE",
            12 => "CAP_NET_ADMIN",
            13 => "CAP_NET_RAW",
            14 => "CAP_IPC_LOCK",
            23 => "CAP_SYS_NICE",
            24 => "CAP_SYS_RESOURCE",
            n => return write!(f, "capability {n}"),
        };
        f.write_str(name)
    }
}
