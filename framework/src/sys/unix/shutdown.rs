//! `Shutdown`: stops a listener and its connection from another thread (a signal
//! handler thread, a VMM's control loop).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use mio::Waker;
use parking_lot::Mutex;

/// A cloneable trigger that makes a listener's serve loop and its current connection
/// return.
///
/// # Example
/// ```
/// use vhost_user_sync::backend::Shutdown;
/// let s = Shutdown::new();
/// assert!(!s.is_triggered());
/// s.trigger();
/// assert!(s.is_triggered());
/// ```
#[derive(Clone, Default, Debug)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default, Debug)]
struct ShutdownInner {
    flag: AtomicBool,
    wakers: Mutex<Vec<Weak<Waker>>>,
}

impl Shutdown {
    /// A trigger not yet pulled.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Pulls the trigger: every poll loop watching it wakes up and returns.
    pub fn trigger(&self) {
        self.inner.flag.store(true, Ordering::Release);
        for w in self.inner.wakers.lock().iter().filter_map(Weak::upgrade) {
            let _ = w.wake();
        }
    }

    /// Whether the trigger was pulled.
    pub fn is_triggered(&self) -> bool {
        self.inner.flag.load(Ordering::Acquire)
    }

    /// Forgets the wakers that are gone (each dead entry pins its allocation, and a
    /// program serving many devices would keep one per connection it ever served).
    pub(crate) fn forget_gone_wakers(&self) {
        let mut wakers = self.inner.wakers.lock();
        wakers.retain(|w| w.strong_count() > 0);
        wakers.shrink_to_fit();
    }

    pub(crate) fn watch(&self, waker: &Arc<Waker>) {
        let mut wakers = self.inner.wakers.lock();
        wakers.retain(|w| w.strong_count() > 0);
        wakers.push(Arc::downgrade(waker));
    }
}
