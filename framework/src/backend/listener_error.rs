//! `ListenerError`: what ends a listener's serve loop.

use thiserror::Error;

use super::ServeError;
use crate::sys::unix::EndpointError;

/// Errors of [`VhostUserListener`](super::VhostUserListener).
///
/// # Example
/// ```
/// use vhost_user_sync::backend::ListenerError;
/// use vhost_user_sync::sys::unix::EndpointError;
/// let e = ListenerError::from(EndpointError::PathInUse { path: "/tmp/x".into() });
/// assert!(e.to_string().contains("/tmp/x"));
/// ```
#[derive(Debug, Error)]
pub enum ListenerError {
    /// The socket could not be set up, accepted on or connected.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A connection ended with an error (after it was served as far as possible).
    #[error(transparent)]
    Serve(#[from] ServeError),
}
