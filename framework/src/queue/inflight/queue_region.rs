//! `QueueRegion`: one queue's part of the in-flight area, read and written by offset.

use std::sync::atomic::Ordering;

use crate::memory::MemoryTable;

/// A queue's region: the area's one-region table and where the region starts in it.
#[derive(Debug, Clone)]
pub(super) struct QueueRegion {
    mem: MemoryTable,
    base: u64,
}

impl QueueRegion {
    pub(super) fn new(mem: MemoryTable, base: u64) -> Self {
        QueueRegion { mem, base }
    }

    /// The value at `at` (0 if it cannot be read: the area was checked to hold every
    /// offset read here, and a file shrunk under it reads as zeroes).
    pub(super) fn load<T: vm_memory::AtomicAccess + Default>(&self, at: u64) -> T {
        self.mem
            .load::<T>(self.base + at, Ordering::Acquire)
            .unwrap_or_default()
    }

    /// Stores `v` at `at` with `order`.
    pub(super) fn store<T: vm_memory::AtomicAccess>(&self, at: u64, v: T, order: Ordering) {
        #[cfg(test)]
        if !crash::store_allowed() {
            return;
        }
        // The region was checked to hold every offset written here; a file shrunk
        // under the mapping is caught by its fault guard.
        let _ = self.mem.store::<T>(self.base + at, v, order);
    }
}

/// A simulated crash for the tests: after a set number of stores to the region, the
/// rest are lost, as if the process had been killed there.
#[cfg(test)]
pub(crate) mod crash {
    use std::cell::Cell;

    thread_local! {
        static LEFT: Cell<Option<u32>> = const { Cell::new(None) };
    }

    /// Lets `n` more stores through (None: all).
    pub(crate) fn allow(n: Option<u32>) {
        LEFT.with(|l| l.set(n));
    }

    /// Whether the next store happens (and counts it).
    pub(crate) fn store_allowed() -> bool {
        LEFT.with(|l| match l.get() {
            None => true,
            Some(0) => false,
            Some(n) => {
                l.set(Some(n - 1));
                true
            }
        })
    }
}
