//! `Queues`: the running queues of one worker, for device events.

use super::Queue;

/// The running queues of one worker, for device events that feed queues (a tap that
/// became readable fills the RX queue).
///
/// # Example
/// ```no_run
/// # use vhost_user_sync::device::Queues;
/// # fn on_tap_readable(queues: &mut Queues<'_>) {
/// let filled = queues.with_queue(0, |rx| rx.has_available());
/// # }
/// ```
pub struct Queues<'a> {
    pub(crate) inner: &'a mut dyn QueueAccess,
}

impl Queues<'_> {
    /// Runs `f` on queue `index` if it is started, enabled and not broken; signals the
    /// guest after.
    pub fn with_queue<R>(&mut self, index: u16, f: impl FnOnce(&mut Queue<'_>) -> R) -> Option<R> {
        let mut out = None;
        let mut f = Some(f);
        self.inner.with_queue(index, &mut |q| {
            if let Some(f) = f.take() {
                out = Some(f(q));
            }
        });
        out
    }
}

pub(crate) trait QueueAccess {
    fn with_queue(&mut self, index: u16, f: &mut dyn FnMut(&mut Queue<'_>));
}
