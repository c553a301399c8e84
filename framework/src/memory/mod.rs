//! Guest memory shared by the frontend as fds: mapping, address translation and checked
//! access.

mod memory_error;
mod region;
mod table;

pub use memory_error::MemoryError;
pub use region::GuestRegion;
pub use table::{MemoryTable, MAX_MEM_SLOTS};
