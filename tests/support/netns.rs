//! Private network namespaces for whole-stack network tests.
//!
//! Include with `#[path = "support/netns.rs"] mod netns;`.
//!
//! A test's host-side network (a backend's tap, its address, the host end of
//! TCP connections) lives in a namespace of its own, made with `ip netns add`
//! and deleted again when the [`NetNs`] is dropped, on success and on failure
//! alike. Such a namespace has no route anywhere but its own links.
#![allow(dead_code)]

use std::fs::File;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use nix::sched::CloneFlags;

/// Why no network namespace can be made here (they need root and iproute2's
/// `ip`), or `None` when they can.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("network namespaces need root".to_string());
    }
    match Command::new("ip")
        .arg("-V")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(st) if st.success() => None,
        Ok(st) => Some(format!("`ip -V` failed ({st})")),
        Err(e) => Some(format!("cannot run `ip` (iproute2): {e}")),
    }
}

/// Runs `ip ARGS`; panics with its output when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "ip {} failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace `vhu-<pid>-<n>` with its loopback up; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Makes a fresh namespace; panics when `ip netns add` fails.
    pub fn create() -> NetNs {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let name = format!("vhu-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        // From here on, drop deletes it, also if the next step fails.
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`; panics when it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `f` on a new thread that has entered the namespace first: the
    /// sockets it makes live there.
    pub fn spawn<T, F>(&self, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        std::thread::spawn(move || {
            // setns() moves only the calling thread.
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("cannot enter {path}: {e}"));
            drop(file);
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Processes still inside keep the namespace alive until they exit, but
        // its name is gone at once.
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("cannot run ip netns del {}: {e}", self.name),
        }
    }
}
