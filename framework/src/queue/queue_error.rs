//! Errors of the queue layer: a guest's ring or descriptors that break the rules.

use thiserror::Error;

use super::InflightError;
use crate::memory::MemoryError;

/// A ring or chain the backend refuses.
///
/// # Example
/// ```
/// use vhost_user_sync::queue::QueueError;
/// let e = QueueError::ChainTooLong { head: 3, limit: 256 };
/// assert_eq!(e.to_string(), "chain at head 3 is longer than 256 descriptors (loop?)");
/// ```
#[derive(Debug, Error)]
pub enum QueueError {
    /// A ring part or a buffer is not in guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The ring's part of the in-flight area cannot be used.
    #[error(transparent)]
    Inflight(#[from] InflightError),
    /// The avail index moved further than the ring holds.
    #[error("avail index {avail} is {pending} entries ahead of {next}, ring holds {size}")]
    AvailOverrun {
        /// The guest's avail index.
        avail: u16,
        /// Where the device is.
        next: u16,
        /// The difference.
        pending: u16,
        /// Queue size.
        size: u16,
    },
    /// A head or `next` index at or above the table size.
    #[error("descriptor index {index} is outside a table of {size}")]
    BadIndex {
        /// The index.
        index: u16,
        /// The table size.
        size: u32,
    },
    /// The chain has more descriptors than the table (a loop).
    #[error("chain at head {head} is longer than {limit} descriptors (loop?)")]
    ChainTooLong {
        /// The chain's head.
        head: u16,
        /// The bound.
        limit: u32,
    },
    /// An indirect descriptor inside an indirect table.
    #[error("nested indirect descriptor in chain at head {head}")]
    NestedIndirect {
        /// The chain's head.
        head: u16,
    },
    /// An indirect table that is empty, not a multiple of 16 bytes, or too large.
    #[error("indirect table of {len} bytes at {addr:#x} is invalid")]
    BadIndirectTable {
        /// Table address.
        addr: u64,
        /// Table length.
        len: u32,
    },
    /// INDIRECT used without VIRTIO_RING_F_INDIRECT_DESC, or with NEXT.
    #[error("indirect descriptor not allowed here (flags {flags:#x})")]
    IndirectNotAllowed {
        /// The descriptor's flags.
        flags: u16,
    },
    /// A device-readable descriptor after a device-writable one.
    #[error("readable descriptor after a writable one in chain at head {head}")]
    ReadableAfterWritable {
        /// The chain's head.
        head: u16,
    },
    /// The chain's total length overflows 32 bits.
    #[error("chain at head {head} is longer than 4 GiB")]
    ChainLengthOverflow {
        /// The chain's head.
        head: u16,
    },
    /// One pop refused a whole ring's worth of chains and more kept coming (the avail
    /// index moves under the device, as when the used ring overlays the avail ring).
    #[error(
        "a ring's worth ({size}) of invalid chains in one pop and the avail index still moves"
    )]
    RefusedRingful {
        /// Queue size.
        size: u16,
    },
    /// A used entry for a head that is outside the ring.
    #[error("used entry for head {head} in a ring of {size}")]
    BadUsedHead {
        /// The head.
        head: u16,
        /// Queue size.
        size: u16,
    },
    /// The driver offered a buffer id the device still holds.
    #[error("buffer id {id} offered again while still in flight")]
    IdInFlight {
        /// The buffer id.
        id: u16,
    },
    /// A chain that is not held by the device was used or handed back (used already,
    /// handed back already, or from before the ring was stopped).
    #[error("chain {id} is not in flight (used or handed back twice?)")]
    ChainNotInFlight {
        /// The chain's buffer id.
        id: u16,
    },
    /// A chain from another ring, another connection or an earlier start of this ring.
    #[error("chain {id} does not belong to queue {queue} as it runs now")]
    ForeignChain {
        /// The chain's buffer id.
        id: u16,
        /// The queue it was given to.
        queue: u16,
    },
    /// A ring state (SET_VRING_BASE) that does not fit the ring.
    #[error("ring state {num:#x} does not fit a ring of {size}")]
    BadRingState {
        /// The state as sent.
        num: u32,
        /// Queue size.
        size: u16,
    },
    /// The ring broke (the cause was logged and reported on the err eventfd).
    #[error("ring broken: {0}")]
    Broken(String),
    /// A ring's parts are not aligned (split: descriptors 16 bytes, avail 2, used 4;
    /// packed: descriptors 16, event areas 4).
    #[error("ring parts misaligned: descriptors {desc:#x}, driver area {driver:#x}, device area {device:#x}")]
    Misaligned {
        /// Descriptor ring.
        desc: u64,
        /// Driver event suppression area.
        driver: u64,
        /// Device event suppression area.
        device: u64,
    },
}
