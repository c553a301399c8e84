//! Split virtqueues, device side: popping descriptor chains, reading and writing their
//! buffers, publishing used entries and deciding when to notify.

mod chain;
mod chain_cursor;
mod chain_reader;
mod chain_writer;
mod descriptor;
mod queue_error;
mod ring_view;
mod split_queue;

pub use chain::DescriptorChain;
pub use chain_reader::ChainReader;
pub use chain_writer::ChainWriter;
pub use descriptor::Descriptor;
pub use queue_error::QueueError;
pub use split_queue::{RingAddrs, SplitQueue};
