//! Guest memory shared by the frontend as fds: mapping, address translation and checked
//! access.

mod dirty_log;
mod memory_error;
mod prefetch;
mod region;
mod table;

pub use dirty_log::{DirtyLog, LOG_PAGE_SIZE};
pub use memory_error::MemoryError;
pub use region::GuestRegion;
pub use table::{MemoryTable, MAX_MEM_SLOTS, PREFETCH_MAX};

#[cfg(test)]
pub(crate) use dirty_log::{collect, dirty_pages, test_log};
#[cfg(test)]
pub(crate) use table::test_table;
