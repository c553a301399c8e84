//! Device state for migration: an entropy device has none beyond its rings, which the
//! frontend saves itself (GET_VRING_BASE).

/// The saved state of an rng device (empty).
///
/// # Example
/// ```
/// assert_eq!(vhost_user_sync_rng::persistence::RngState::default().to_bytes(), Vec::<u8>::new());
/// ```
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RngState;

impl RngState {
    /// Serialised form.
    pub fn to_bytes(&self) -> Vec<u8> {
        Vec::new()
    }
}
