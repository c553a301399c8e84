//! The in-flight area (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): shared memory the backend
//! hands the frontend, in which it records which requests it has taken from each ring
//! and not yet returned, so that a backend started again after a crash resubmits them.
//!
//! [`InflightArea`] is the whole area (created for GET_INFLIGHT_FD, or mapped from the
//! frontend's fd on SET_INFLIGHT_FD); [`SplitInflight`] is one split ring's part of it,
//! written by the ring as chains are taken and used. Every field is read as untrusted:
//! the frontend holds the fd and may have written anything into it.

mod inflight_error;
pub mod layout;
mod packed_inflight;
mod queue_region;
mod split_inflight;

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

pub use inflight_error::InflightError;
pub use packed_inflight::{PackedInflight, PackedResume};
pub use split_inflight::SplitInflight;

use crate::memory::MemoryTable;
use crate::protocol::payload::{InflightInfo, MemoryRegionDesc};
use crate::sys::unix::FaultNotice;

/// The largest ring the area describes (packed rings hold up to 2^15 entries).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// One queue's part of an area, in the layout of its ring.
#[derive(Debug, Clone)]
pub enum QueueInflight {
    /// A split ring's records.
    Split(SplitInflight),
    /// A packed ring's records.
    Packed(PackedInflight),
}

/// A mapped in-flight area: `num_queues` regions of the layout's size, one per queue.
///
/// # Example
/// ```
/// use vhost_user_sync::queue::InflightArea;
/// // What GET_INFLIGHT_FD hands out for 2 split rings of 128 entries.
/// let (area, fd) = InflightArea::create(2, 128, false, None).unwrap();
/// assert_eq!(area.info().mmap_size, 2 * (16 + 16 * 128 + 48));
/// assert_eq!(fd.metadata().unwrap().len(), area.info().mmap_size);
/// // The frontend sends the same fd back on SET_INFLIGHT_FD (after a reconnect).
/// let again = InflightArea::map(&area.info(), fd, false, None).unwrap();
/// assert!(again.split_queue(1).is_ok());
/// assert!(again.split_queue(2).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct InflightArea {
    mem: MemoryTable,
    info: InflightInfo,
    packed: bool,
    stride: u64,
}

impl InflightArea {
    /// Creates an area for `num_queues` rings of `queue_size` entries in the split or
    /// packed layout: a sealed memfd (it can neither grow nor shrink), zeroed, with
    /// each queue's `desc_num` set. Returns the area and the fd to send.
    pub fn create(
        num_queues: u16,
        queue_size: u16,
        packed: bool,
        notice: Option<Arc<FaultNotice>>,
    ) -> Result<(Self, File), InflightError> {
        let stride = Self::check_geometry(num_queues, queue_size, packed)?;
        let size = stride * u64::from(num_queues);
        let fd = memfd_create(
            "vhost-user-inflight",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(std::io::Error::from)?;
        let file = File::from(fd);
        file.set_len(size)?;
        fcntl(
            file.as_fd(),
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(std::io::Error::from)?;
        let info = InflightInfo {
            mmap_size: size,
            mmap_offset: 0,
            num_queues,
            queue_size,
        };
        let area = Self::map(&info, file.try_clone()?, packed, notice)?;
        let desc_num = if packed {
            layout::packed::DESC_NUM
        } else {
            layout::split::DESC_NUM
        };
        for q in 0..num_queues {
            let at = area.queue_base(q) + desc_num;
            area.mem
                .store::<u16>(at, queue_size, std::sync::atomic::Ordering::Relaxed)?;
        }
        Ok((area, file))
    }

    /// Maps the frontend's area (SET_INFLIGHT_FD), checking its geometry and size. The
    /// mapping is guarded like guest memory: a file shrunk under it reads as zeroes and
    /// signals `notice`.
    pub fn map(
        info: &InflightInfo,
        file: File,
        packed: bool,
        notice: Option<Arc<FaultNotice>>,
    ) -> Result<Self, InflightError> {
        let stride = Self::check_geometry(info.num_queues, info.queue_size, packed)?;
        let need = stride * u64::from(info.num_queues);
        if info.mmap_size < need {
            return Err(InflightError::TooSmall {
                size: info.mmap_size,
                need,
            });
        }
        let desc = MemoryRegionDesc {
            guest_phys_addr: 0,
            memory_size: info.mmap_size,
            userspace_addr: 0,
            mmap_offset: info.mmap_offset,
        };
        let table = match notice {
            Some(n) => MemoryTable::watched(n),
            None => MemoryTable::empty(),
        };
        let mem = table.replaced(&[desc], vec![file])?;
        Ok(InflightArea {
            mem,
            info: *info,
            packed,
            stride,
        })
    }

    fn check_geometry(
        num_queues: u16,
        queue_size: u16,
        packed: bool,
    ) -> Result<u64, InflightError> {
        let bad = |why| InflightError::BadGeometry {
            num_queues,
            queue_size,
            why,
        };
        if num_queues == 0 {
            return Err(bad("no queues"));
        }
        if queue_size == 0 || queue_size > MAX_QUEUE_SIZE {
            return Err(bad("queue size out of range (1 to 32768)"));
        }
        Ok(layout::queue_region_len(packed, queue_size))
    }

    /// The description sent with GET_INFLIGHT_FD's reply.
    pub fn info(&self) -> InflightInfo {
        self.info
    }

    /// Whether the area is laid out for packed rings.
    pub fn packed(&self) -> bool {
        self.packed
    }

    /// Whether the mapping faulted (the frontend's file shrank under it).
    pub fn faulted(&self) -> bool {
        self.mem.faults().next().is_some()
    }

    fn queue_base(&self, queue: u16) -> u64 {
        self.stride * u64::from(queue)
    }

    /// Queue `queue`'s part, in the area's layout.
    pub fn queue(&self, queue: u16) -> Result<QueueInflight, InflightError> {
        if self.packed {
            self.packed_queue(queue).map(QueueInflight::Packed)
        } else {
            self.split_queue(queue).map(QueueInflight::Split)
        }
    }

    /// Queue `queue`'s part of a packed-layout area.
    pub fn packed_queue(&self, queue: u16) -> Result<PackedInflight, InflightError> {
        if queue >= self.info.num_queues || !self.packed {
            return Err(InflightError::NoSuchQueue {
                queue,
                num_queues: if self.packed { self.info.num_queues } else { 0 },
            });
        }
        Ok(PackedInflight::new(
            self.mem.clone(),
            self.queue_base(queue),
            queue,
            self.info.queue_size,
        ))
    }

    /// Queue `queue`'s part of a split-layout area.
    pub fn split_queue(&self, queue: u16) -> Result<SplitInflight, InflightError> {
        if queue >= self.info.num_queues || self.packed {
            return Err(InflightError::NoSuchQueue {
                queue,
                num_queues: if self.packed { 0 } else { self.info.num_queues },
            });
        }
        Ok(SplitInflight::new(
            self.mem.clone(),
            self.queue_base(queue),
            queue,
            self.info.queue_size,
        ))
    }
}
