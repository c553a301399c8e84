//! What the rng device needs in a sandbox: its entropy source, bound read-only when
//! the device opens it by path (a source opened before confinement needs nothing).

use vhost_user_sync::sandbox::{PathAccess, SandboxNeeds};

use crate::device::EntropyFile;

/// The source's path, read-only, unless it is already open.
pub fn needs(source: &EntropyFile) -> SandboxNeeds {
    match source {
        EntropyFile::Path(p) => SandboxNeeds::new().path(p.clone(), PathAccess::ReadOnly),
        EntropyFile::Open(_) => SandboxNeeds::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_bound_an_open_file_is_not() {
        let by_path = needs(&EntropyFile::Path("/dev/urandom".into()));
        let bound: Vec<_> = by_path.paths().collect();
        assert_eq!(
            bound,
            [(std::path::Path::new("/dev/urandom"), PathAccess::ReadOnly)]
        );
        let open = std::sync::Arc::new(std::fs::File::open("/dev/urandom").unwrap());
        assert_eq!(needs(&EntropyFile::Open(open)).paths().count(), 0);
    }
}
