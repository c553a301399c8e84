//! `SandboxError`: why a device process could not be confined or supervised.

use std::time::Duration;

use super::ChildExit;

/// Why a device process could not be started confined, or why supervision gave up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// `fork` (or the pipe the child reports through) failed.
    #[error("cannot start the device process: {0}")]
    Fork(#[source] nix::Error),
    /// The child could not confine itself; it exited before serving anything.
    #[error("the device process could not enter its sandbox: {0}")]
    Setup(String),
    /// `--user` given where no uid can be changed (not root).
    #[error("switching to uid {uid} needs root")]
    UserNeedsRoot {
        /// The uid asked for.
        uid: u32,
    },
    /// The chroot mode cannot give a device host paths.
    #[error("the chroot sandbox cannot give the device {path}: host paths are bound only with --sandbox namespace")]
    PathNeedsNamespace {
        /// The path the device declared.
        path: String,
    },
    /// Preparing the chroot directory failed.
    #[error("creating the sandbox's empty root under {dir}: {source}")]
    EmptyRoot {
        /// Where it was to be created.
        dir: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the device process failed.
    #[error("waiting for device process {pid}: {source}")]
    Wait {
        /// Its pid.
        pid: i32,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The device process kept failing.
    #[error("the device process failed {count} times within {window:?} (last: {last}); giving up")]
    TooManyRestarts {
        /// Failures counted.
        count: u32,
        /// The window they fell in.
        window: Duration,
        /// How the last one ended.
        last: ChildExit,
    },
}
