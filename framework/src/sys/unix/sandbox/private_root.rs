//! The confined process's file system: an empty, read-only tmpfs as its root, holding
//! only the host paths the device declared (bind mounts) and its own pid namespace's
//! `/proc`, or a `chroot` into an empty
//! directory where no mount namespace is available.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::libc;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, chroot, pivot_root};

use crate::sandbox::PathAccess;

/// Where the new root is assembled before `pivot_root` (inside the private mount
/// namespace, so the host never sees it).
const STAGING: &str = "/tmp";

/// A step of building the root that failed, with the path it was about.
#[derive(Debug)]
pub struct RootError {
    /// What was being done.
    pub what: String,
    /// Why it failed.
    pub source: io::Error,
}

fn step<T>(
    what: impl FnOnce() -> String,
    r: Result<T, impl Into<io::Error>>,
) -> Result<T, RootError> {
    r.map_err(|e| RootError {
        what: what(),
        source: e.into(),
    })
}

/// Replaces the root of the calling process (already in a new mount namespace) with an
/// empty tmpfs holding `paths` at their host locations, then makes it read-only.
pub fn pivot_to_private_root(paths: &[(PathBuf, PathAccess)]) -> Result<(), RootError> {
    // Nothing mounted from here on may reach back into the host's mount table.
    step(
        || "making the mount namespace private".into(),
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )?;
    // Open every source first: the staging mount may hide it.
    let sources = paths
        .iter()
        .map(|(p, a)| {
            let f = step(
                || format!("opening {} for the sandbox", p.display()),
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                    .open(p),
            )?;
            Ok((p.clone(), *a, f))
        })
        .collect::<Result<Vec<(PathBuf, PathAccess, File)>, RootError>>()?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    step(
        || format!("mounting a tmpfs on {STAGING}"),
        mount(
            Some("tmpfs"),
            STAGING,
            Some("tmpfs"),
            flags,
            Some("size=64k,mode=0755"),
        ),
    )?;
    for (path, access, source) in &sources {
        bind_into(Path::new(STAGING), path, *access, source)?;
    }
    drop(sources);
    mount_proc(Path::new(STAGING))?;
    step(|| format!("entering {STAGING}"), chdir(STAGING))?;
    step(
        || "pivot_root into the sandbox's root".into(),
        pivot_root(".", "."),
    )?;
    step(
        || "detaching the host's root".into(),
        umount2(".", MntFlags::MNT_DETACH),
    )?;
    step(|| "entering the new root".into(), chdir("/"))?;
    step(
        || "making the sandbox's root read-only".into(),
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags,
            None::<&str>,
        ),
    )
}

/// A read-only procfs of the new pid namespace at `root/proc`: the framework checks the
/// fds a frontend passes through `/proc/self/fd`. With `subset=pid` (Linux 5.8) it holds
/// only the namespace's processes, none of the kernel's tunables.
fn mount_proc(root: &Path) -> Result<(), RootError> {
    let target = root.join("proc");
    step(
        || format!("creating {}", target.display()),
        std::fs::create_dir_all(&target),
    )?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    let subset = mount(
        Some("proc"),
        &target,
        Some("proc"),
        flags,
        Some("subset=pid"),
    );
    if subset.is_ok() {
        return Ok(());
    }
    step(
        || "mounting the sandbox's /proc".into(),
        mount(Some("proc"), &target, Some("proc"), flags, None::<&str>),
    )
}

/// Binds `source` (an `O_PATH` fd of `path`) at `path` under `root`.
fn bind_into(root: &Path, path: &Path, access: PathAccess, source: &File) -> Result<(), RootError> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(RootError {
            what: format!("binding {} into the sandbox", path.display()),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not an absolute, normal path"),
        });
    }
    let target = root.join(path.strip_prefix("/").unwrap_or(path));
    let is_dir = step(|| format!("reading {}", path.display()), source.metadata())?.is_dir();
    if let Some(parent) = target.parent() {
        step(
            || format!("creating {}", parent.display()),
            std::fs::create_dir_all(parent),
        )?;
    }
    if is_dir {
        step(
            || format!("creating {}", target.display()),
            std::fs::create_dir_all(&target),
        )?;
    } else {
        step(
            || format!("creating {}", target.display()),
            File::create(&target),
        )?;
    }
    let from = format!("/proc/self/fd/{}", source.as_raw_fd());
    step(
        || format!("binding {} into the sandbox", path.display()),
        mount(
            Some(from.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    )?;
    if access == PathAccess::ReadOnly {
        // A remount must repeat the flags the kernel locked on the source mount.
        let locked = step(
            || format!("reading the mount of {}", path.display()),
            nix::sys::statvfs::statvfs(&target),
        )?;
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        use nix::sys::statvfs::FsFlags;
        for (st, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if locked.flags().contains(st) {
                flags |= ms;
            }
        }
        step(
            || format!("making {} read-only in the sandbox", path.display()),
            mount(None::<&str>, &target, None::<&str>, flags, None::<&str>),
        )?;
    }
    Ok(())
}

/// Confines the calling process to `dir` (empty, made by the supervisor) with
/// `chroot`: the weaker sandbox for where no mount namespace can be had.
pub fn chroot_into(dir: &Path) -> Result<(), RootError> {
    step(|| format!("chroot into {}", dir.display()), chroot(dir))?;
    step(|| "entering the new root".into(), chdir("/"))
}
