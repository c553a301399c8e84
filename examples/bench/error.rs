//! The benchmark's error type: a message with the context it happened in.

use std::fmt;

/// A failure, described by what was being done and why it failed.
#[derive(Debug)]
pub struct BenchError(String);

impl BenchError {
    /// An error with just a message.
    pub fn new(msg: impl Into<String>) -> Self {
        BenchError(msg.into())
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

/// Results of the benchmark.
pub type Result<T> = std::result::Result<T, BenchError>;

/// Adds what was being done to an error.
pub trait Context<T> {
    /// Prefixes the error with `what`.
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| BenchError(format!("{what}: {e}")))
    }
}

/// Returns early with a formatted [`BenchError`].
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::BenchError::new(format!($($arg)*)))
    };
}
pub(crate) use bail;
