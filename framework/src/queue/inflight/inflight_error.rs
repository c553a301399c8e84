//! Errors of the in-flight area: a region the frontend sent (or asked for) that cannot
//! be used as the spec lays it out.

use thiserror::Error;

use crate::memory::MemoryError;

/// An in-flight area, or one queue's part of it, that the backend refuses.
///
/// # Example
/// ```
/// use vhost_user_sync::queue::InflightError;
/// let e = InflightError::BadVersion { queue: 1, version: 7 };
/// assert_eq!(e.to_string(), "in-flight area of queue 1 has version 7 (0 or 1 expected)");
/// ```
#[derive(Debug, Error)]
pub enum InflightError {
    /// The area's geometry is out of range.
    #[error("in-flight area for {num_queues} queue(s) of {queue_size} entries: {why}")]
    BadGeometry {
        /// Queues the frontend described.
        num_queues: u16,
        /// Entries per queue.
        queue_size: u16,
        /// What is wrong.
        why: &'static str,
    },
    /// The frontend's area is smaller than its geometry needs.
    #[error("in-flight area of {size} bytes is too small: {need} needed")]
    TooSmall {
        /// `mmap_size` as sent.
        size: u64,
        /// What the geometry needs.
        need: u64,
    },
    /// The area could not be created or mapped.
    #[error("in-flight area: {0}")]
    Memory(#[from] MemoryError),
    /// Creating the memfd failed.
    #[error("in-flight area: {0}")]
    Io(#[from] std::io::Error),
    /// A queue beyond the area.
    #[error("queue {queue} is outside an in-flight area of {num_queues} queue(s)")]
    NoSuchQueue {
        /// The queue.
        queue: u16,
        /// Queues in the area.
        num_queues: u16,
    },
    /// An unknown layout version.
    #[error("in-flight area of queue {queue} has version {version} (0 or 1 expected)")]
    BadVersion {
        /// The queue.
        queue: u16,
        /// The version found.
        version: u16,
    },
    /// `desc_num` does not match the area, or the ring is larger than it.
    #[error("in-flight area of queue {queue} holds {desc_num} entries: {why} ({expected})")]
    BadDescNum {
        /// The queue.
        queue: u16,
        /// The `desc_num` found.
        desc_num: u16,
        /// The value it was compared with.
        expected: u16,
        /// What is wrong.
        why: &'static str,
    },
    /// The last batch is longer than the ring.
    #[error(
        "in-flight area of queue {queue}: last batch of {batch} entries \
         (used index {ring_used} in the ring, {area_used} in the area) exceeds a ring of {size}"
    )]
    BadBatch {
        /// The queue.
        queue: u16,
        /// Entries the batch would hold.
        batch: u16,
        /// The ring's used index.
        ring_used: u16,
        /// The area's `used_idx`.
        area_used: u16,
        /// Ring size.
        size: u16,
    },
    /// An entry index (a batch link or an in-flight head) outside the ring.
    #[error("in-flight area of queue {queue}: {what} {index} is outside a ring of {size}")]
    BadEntry {
        /// The queue.
        queue: u16,
        /// Which field held it.
        what: &'static str,
        /// The index.
        index: u16,
        /// Ring size.
        size: u16,
    },
    /// An `inflight` byte that is neither 0 nor 1.
    #[error("in-flight area of queue {queue}: entry {index} has inflight byte {value}")]
    BadFlag {
        /// The queue.
        queue: u16,
        /// The entry.
        index: u16,
        /// The byte found.
        value: u8,
    },
}
