//! Keeping a second writer off the image: open-file-description (OFD) byte-range locks
//! in the layout QEMU's `file` driver uses, so the lock is seen by qemu-storage-daemon,
//! QEMU's own `-drive`/`-blockdev` and `qemu-img` as well as by another backend of ours.
//!
//! Each permission a user of the image has is one byte: byte `100 + p` is read-locked
//! while the permission is held, byte `200 + p` while it is refused to everyone else.
//! Read locks never conflict with read locks, so taking them always succeeds; whether the
//! image is in use is then asked with `F_OFD_GETLK` (which ignores the caller's own open
//! file description): a permission we hold must not be refused by another user, and a
//! permission we refuse must not be held by one. The locks belong to the open file and go
//! away with it, also when the process is killed.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;
use thiserror::Error;

/// First byte of the "permission held" range.
const HELD_BASE: i64 = 100;
/// First byte of the "permission refused to others" range.
const REFUSED_BASE: i64 = 200;

/// A permission on the image, numbered as QEMU numbers its block permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Reading what was written (bit 0).
    ConsistentRead = 0,
    /// Changing the image's contents (bit 1).
    Write = 1,
}

impl Permission {
    fn name(self) -> &'static str {
        match self {
            Permission::ConsistentRead => "consistent read",
            Permission::Write => "write",
        }
    }
}

/// Why the image could not be locked.
#[derive(Debug, Error)]
pub enum ImageLockError {
    /// Another program uses the image in a way that excludes us.
    #[error(
        "{path} is in use by another program: it {conflict} the {} permission (lock byte {byte}); \
         stop it, or turn locking off (--lock off) if the image is shared storage on purpose",
        permission.name()
    )]
    InUse {
        /// The image.
        path: PathBuf,
        /// The permission in conflict.
        permission: Permission,
        /// What the other program does: "holds" or "refuses".
        conflict: &'static str,
        /// The lock byte found taken.
        byte: i64,
    },
    /// The host refused a lock operation.
    #[error("cannot lock {path} (byte {byte}): {source}")]
    Io {
        /// The image.
        path: PathBuf,
        /// The lock byte.
        byte: i64,
        /// The error.
        source: io::Error,
    },
}

impl From<ImageLockError> for io::Error {
    fn from(e: ImageLockError) -> Self {
        let kind = match &e {
            ImageLockError::InUse { .. } => io::ErrorKind::ResourceBusy,
            ImageLockError::Io { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}

/// Locks `file` (the image at `path`) for a device that reads it and, unless
/// `read_only`, writes it, refusing writes to everyone else, as QEMU does for a disk
/// without `share-rw`. Two read-only users may share an image; a writer excludes every
/// other user that refuses writes, and every other writer.
///
/// # Example
/// ```
/// use vhost_user_sync_blk::image_lock::{lock_image, ImageLockError};
/// let path = std::env::temp_dir().join(format!("lock-doc-{}.img", std::process::id()));
/// let open = || std::fs::OpenOptions::new().read(true).write(true).create(true).open(&path).unwrap();
/// let (first, second) = (open(), open());
/// lock_image(&first, &path, false).unwrap();
/// let refused = lock_image(&second, &path, false).unwrap_err();
/// assert!(matches!(refused, ImageLockError::InUse { .. }));
/// drop(first); // the lock goes with the open file
/// lock_image(&second, &path, false).unwrap();
/// # std::fs::remove_file(&path).unwrap();
/// ```
pub fn lock_image(file: &File, path: &Path, read_only: bool) -> Result<(), ImageLockError> {
    let held: &[Permission] = if read_only {
        &[Permission::ConsistentRead]
    } else {
        &[Permission::ConsistentRead, Permission::Write]
    };
    let refused = [Permission::Write];
    // Every byte this user takes: its permissions held, then those refused to others.
    let taken: Vec<i64> = held
        .iter()
        .map(|&p| HELD_BASE + p as i64)
        .chain(refused.iter().map(|&p| REFUSED_BASE + p as i64))
        .collect();
    let check = |permission: Permission, byte: i64, conflict| match taken_by_other(file, byte) {
        Ok(false) => Ok(()),
        Ok(true) => Err(ImageLockError::InUse {
            path: path.to_path_buf(),
            permission,
            conflict,
            byte,
        }),
        Err(source) => Err(io_error(path, byte, source)),
    };
    let result = taken
        .iter()
        .try_for_each(|&byte| set_read_lock(file, byte).map_err(|e| io_error(path, byte, e)))
        .and_then(|()| {
            held.iter()
                .try_for_each(|&p| check(p, REFUSED_BASE + p as i64, "refuses"))
        })
        .and_then(|()| {
            refused
                .iter()
                .try_for_each(|&p| check(p, HELD_BASE + p as i64, "holds"))
        });
    if result.is_err() {
        // Leave nothing behind that would refuse the program already there.
        for &byte in &taken {
            let _ = set_lock(file, byte, libc::F_UNLCK as libc::c_short);
        }
    }
    result
}

fn io_error(path: &Path, byte: i64, source: io::Error) -> ImageLockError {
    ImageLockError::Io {
        path: path.to_path_buf(),
        byte,
        source,
    }
}

fn one_byte(byte: i64, kind: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is a plain C struct of integers, for which all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = byte;
    lock.l_len = 1;
    // OFD locks need l_pid 0.
    lock.l_pid = 0;
    lock
}

fn set_read_lock(file: &File, byte: i64) -> io::Result<()> {
    set_lock(file, byte, libc::F_RDLCK as libc::c_short)
}

fn set_lock(file: &File, byte: i64, kind: libc::c_short) -> io::Result<()> {
    let lock = one_byte(byte, kind);
    fcntl(file, FcntlArg::F_OFD_SETLK(&lock))
        .map(drop)
        .map_err(io::Error::from)
}

/// Whether another open file description holds any lock on `byte` (one that would stop a
/// write lock).
fn taken_by_other(file: &File, byte: i64) -> io::Result<bool> {
    let mut lock = one_byte(byte, libc::F_WRLCK as libc::c_short);
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut lock)).map_err(io::Error::from)?;
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    struct Image(PathBuf);
    impl Image {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("{name}-{}.img", std::process::id()));
            File::create(&path).unwrap().set_len(4096).unwrap();
            Image(path)
        }
        fn open(&self) -> File {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.0)
                .unwrap()
        }
    }
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn a_second_writer_is_refused_with_the_image_named() {
        let img = Image::new("lock-writer");
        let a = img.open();
        let b = img.open();
        lock_image(&a, &img.0, false).unwrap();
        let e = lock_image(&b, &img.0, false).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&img.0.display().to_string()), "{text}");
        assert!(text.contains("--lock off"), "{text}");
        // The refused one left nothing behind: once the first goes, a third can lock.
        drop(a);
        let c = img.open();
        lock_image(&c, &img.0, false).unwrap();
    }

    #[test]
    fn readers_share_and_exclude_writers_both_ways() {
        let img = Image::new("lock-readers");
        let r1 = img.open();
        let r2 = img.open();
        lock_image(&r1, &img.0, true).unwrap();
        lock_image(&r2, &img.0, true).unwrap();
        let w = img.open();
        assert!(matches!(
            lock_image(&w, &img.0, false),
            Err(ImageLockError::InUse {
                permission: Permission::Write,
                conflict: "refuses",
                ..
            })
        ));
        drop((r1, r2));
        lock_image(&w, &img.0, false).unwrap();
        let r3 = img.open();
        assert!(matches!(
            lock_image(&r3, &img.0, true),
            Err(ImageLockError::InUse {
                permission: Permission::Write,
                conflict: "holds",
                ..
            })
        ));
    }

    #[test]
    fn the_error_converts_to_resource_busy() {
        let img = Image::new("lock-kind");
        let a = img.open();
        let b = img.open();
        lock_image(&a, &img.0, false).unwrap();
        let e: io::Error = lock_image(&b, &img.0, false).unwrap_err().into();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
    }
}
