//! Handing memory the allocator holds but no longer uses back to the kernel.

/// Returns the free pages of every malloc arena to the kernel (glibc's `malloc_trim`).
/// A connection's threads leave their arenas full of freed memory when they end; a
/// process serving hundreds of devices calls this after each disconnect so that its
/// size goes back to what its idle devices need. Elsewhere it does nothing.
///
/// # Example
/// ```
/// let big = vec![1u8; 8 << 20];
/// drop(big);
/// vhost_user_sync::sys::unix::release_free_memory();
/// ```
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists under its locks and
    // gives whole free pages back with madvise; it touches no memory in use.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
