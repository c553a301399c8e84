//! `SandboxMode` and `SeccompMode`: how strongly a device process is confined.

use std::fmt;
use std::str::FromStr;

/// How a device process is confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// New mount, pid, ipc and network namespaces (through a user namespace when not
    /// root), and an empty read-only tmpfs root holding only the paths the device
    /// declared. The strongest.
    Namespace,
    /// `chroot` into an empty directory, for where namespaces are not permitted (a
    /// container without CAP_SYS_ADMIN); needs CAP_SYS_CHROOT. Declared paths cannot
    /// be given to the device in this mode.
    Chroot,
    /// No confinement of the file system or namespaces (seccomp, capabilities and
    /// `--user` still apply).
    None,
}

impl SandboxMode {
    /// The strongest mode this process may use, and why, found by trying it in a
    /// short-lived child.
    ///
    /// ```no_run
    /// let (mode, why) = vhost_user_sync::sandbox::SandboxMode::strongest_available();
    /// println!("sandbox: {mode} ({why})");
    /// ```
    pub fn strongest_available() -> (SandboxMode, String) {
        crate::sys::unix::sandbox::probe_strongest()
    }
}

impl fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SandboxMode::Namespace => "namespace",
            SandboxMode::Chroot => "chroot",
            SandboxMode::None => "none",
        })
    }
}

impl FromStr for SandboxMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "namespace" => Ok(SandboxMode::Namespace),
            "chroot" => Ok(SandboxMode::Chroot),
            "none" => Ok(SandboxMode::None),
            _ => Err(format!("{s:?}: expected namespace, chroot or none")),
        }
    }
}

/// What the seccomp filter does with a system call outside the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// Kill the device process (the supervisor logs it and starts a new one).
    Kill,
    /// Allow it and have the kernel log it (`dmesg`, audit type 1326): for building
    /// a device's list.
    Log,
    /// No filter.
    None,
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Kill => "kill",
            SeccompMode::Log => "log",
            SeccompMode::None => "none",
        })
    }
}

impl FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(SeccompMode::Kill),
            "log" => Ok(SeccompMode::Log),
            "none" => Ok(SeccompMode::None),
            _ => Err(format!("{s:?}: expected kill, log or none")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_alike() {
        for m in [
            SandboxMode::Namespace,
            SandboxMode::Chroot,
            SandboxMode::None,
        ] {
            assert_eq!(m.to_string().parse::<SandboxMode>(), Ok(m));
        }
        for m in [SeccompMode::Kill, SeccompMode::Log, SeccompMode::None] {
            assert_eq!(m.to_string().parse::<SeccompMode>(), Ok(m));
        }
        assert!("jail".parse::<SandboxMode>().is_err());
        assert!("trap".parse::<SeccompMode>().is_err());
    }
}
