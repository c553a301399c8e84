//! Virtqueues, device side: popping descriptor chains, reading and writing their
//! buffers, publishing used entries and deciding when to notify.
//!
//! [`Virtqueue`] is one running queue: its [`Ring`] (the layout: [`SplitRing`] or
//! [`PackedRing`]), the
//! chains in flight, its eventfds and its broken state. Device code sees it through
//! [`crate::device::Queue`].

mod chain;
mod chain_cursor;
mod chain_reader;
mod chain_writer;
mod descriptor;
mod in_flight;
pub mod inflight;
mod iovec_list;
pub mod packed;
mod queue_error;
mod queue_stats;
mod ring;
mod ring_state;
pub mod split;
mod virtqueue;

pub use chain::DescriptorChain;
pub use chain_reader::ChainReader;
pub use chain_writer::ChainWriter;
pub use descriptor::Descriptor;
pub use in_flight::StopAccount;
pub use inflight::{
    InflightArea, InflightError, PackedInflight, PackedResume, QueueInflight, SplitInflight,
};
pub use packed::PackedRing;
pub use queue_error::QueueError;
pub use queue_stats::{QueueCounters, QueueStats};
pub use ring::Ring;
pub use ring_state::RingState;
pub use split::{RingAddrs, SplitRing};
pub use virtqueue::Virtqueue;

/// What a ring yields for one entry the driver made available.
#[derive(Debug)]
pub enum Popped {
    /// A valid chain.
    Chain(DescriptorChain),
    /// A chain that breaks the rules: it goes back to the driver with length 0.
    Refused {
        /// Its buffer id.
        id: u16,
        /// Where it was read.
        position: u16,
        /// Ring slots it took.
        slots: u16,
        /// What was wrong.
        error: QueueError,
    },
}

/// What a ring did with one entry when it walked the chain straight into the caller's
/// [`DescriptorChain`] (the hot path: nothing is moved out through the layers).
#[derive(Debug)]
pub(crate) enum Taken {
    /// The driver offered nothing new.
    Empty,
    /// A valid chain, now in the caller's chain.
    Chain,
    /// A chain that breaks the rules (see [`Popped::Refused`]).
    Refused {
        id: u16,
        position: u16,
        slots: u16,
        /// Boxed: a refusal is rare, and a small `Taken` comes back from every pop in
        /// registers instead of through memory.
        error: Box<QueueError>,
    },
}

impl Taken {
    /// The outcome of walking buffer `id`'s chain, read at ring `position` and taking
    /// `slots` ring slots, into `chain`: the chain (its token placed), or its refusal.
    #[inline]
    pub(crate) fn walked(
        walked: Result<(), QueueError>,
        chain: &mut DescriptorChain,
        id: u16,
        position: u16,
        slots: u16,
    ) -> Self {
        match walked {
            Ok(()) => {
                chain.token.position = position;
                chain.token.slots = slots;
                Taken::Chain
            }
            Err(error) => Taken::Refused {
                id,
                position,
                slots,
                error: Box::new(error),
            },
        }
    }

    /// The public shape of the outcome, with the chain walked into `chain`.
    pub(crate) fn into_popped(self, chain: DescriptorChain) -> Option<Popped> {
        match self {
            Taken::Empty => None,
            Taken::Chain => Some(Popped::Chain(chain)),
            Taken::Refused {
                id,
                position,
                slots,
                error,
            } => Some(Popped::Refused {
                id,
                position,
                slots,
                error: *error,
            }),
        }
    }
}
