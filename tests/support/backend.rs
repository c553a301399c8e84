//! Starting the example backend programs for whole-stack tests.
//!
//! Include with `#[path = "support/backend.rs"] mod backend;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A backend program started by a test; killed when dropped.
pub struct BackendProcess {
    pub child: Child,
    pub socket: PathBuf,
    /// Log lines the program printed (stderr), as they arrive.
    pub log: mpsc::Receiver<String>,
    /// The lines it printed up to and including "listening on".
    pub startup: Vec<String>,
    _dir: TempDir,
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let unique = format!(
            "{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        // Unix socket paths are limited to 108 bytes: prefer /tmp if the target dir is deep.
        let mut dir = base.join(&unique);
        if dir.as_os_str().len() > 60 {
            dir = std::env::temp_dir().join(&unique);
        }
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether the suite runs as CI (`CI` set to anything but empty, `0` or `false`): then a
/// test that cannot find what it needs fails instead of skipping.
pub fn ci() -> bool {
    let v = std::env::var("CI").unwrap_or_default();
    !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false")
}

/// Program `name` on the `PATH`, or `None` after saying why the test is skipped, with
/// `install` telling how to get it. Under CI a missing program fails the test instead.
pub fn required_program(name: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = format!("{name} not found ({install})");
        assert!(!ci(), "required under CI: {why}");
        // Past the harness's output capture, so that the skip is always visible.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIP: {why}");
    }
    found
}

/// What `example --print-capabilities` prints (it must succeed).
pub fn capabilities(example: &str) -> String {
    let out = Command::new(example_path(example))
        .arg("--print-capabilities")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{example} --print-capabilities failed"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The children of process `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Path of example program `name`, built first (in the test's own profile) so that a
/// test never runs a stale binary, even under `cargo test --test X`.
pub fn example_path(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "building example {name} failed");
        built.push(name.to_string());
    }
    let p = profile_dir.join("examples").join(name);
    assert!(p.exists(), "{} not built", p.display());
    p
}

impl BackendProcess {
    /// Starts example `name` listening on a fresh socket path, with `args` added, and
    /// waits until it logs that it listens.
    pub fn start(name: &str, args: &[&str]) -> Self {
        Self::start_with(&[], None, name, args)
    }

    /// Like [`BackendProcess::start`], inside network namespace `netns` (run through
    /// `ip netns exec`, which executes the program in its own place: the child is the
    /// backend itself, so signals and kills reach it).
    pub fn start_in_netns(netns: &str, name: &str, args: &[&str]) -> Self {
        Self::start_with(&["ip", "netns", "exec", netns], None, name, args)
    }

    /// Like [`Self::start_in_netns`], with the program running as user and group `id`
    /// (an unprivileged backend). Its socket directory is made writable for it.
    pub fn start_in_netns_as(netns: &str, id: u32, name: &str, args: &[&str]) -> Self {
        let id = id.to_string();
        let prefix = [
            "ip",
            "netns",
            "exec",
            netns,
            "setpriv",
            "--reuid",
            &id,
            "--regid",
            &id,
            "--clear-groups",
        ];
        Self::start_with(&prefix, None, name, args)
    }

    /// Starts example `name` as the last argument of the command `prefix` (the
    /// program itself when `prefix` is empty), with `RUST_LOG` set to `rust_log`
    /// (default: the test's own `RUST_LOG`, else `info`); see
    /// [`BackendProcess::start`].
    pub fn start_with(prefix: &[&str], rust_log: Option<&str>, name: &str, args: &[&str]) -> Self {
        Self::start_full(prefix, rust_log, None, name, args)
    }

    /// Starts example `name` listening on `socket` (where an earlier backend listened:
    /// a restart after a crash); see [`BackendProcess::start`].
    pub fn start_on(socket: &Path, name: &str, args: &[&str]) -> Self {
        Self::start_full(&[], None, Some(socket), name, args)
    }

    fn start_full(
        prefix: &[&str],
        rust_log: Option<&str>,
        socket: Option<&Path>,
        name: &str,
        args: &[&str],
    ) -> Self {
        let dir = TempDir::new(name);
        if prefix.contains(&"setpriv") {
            // A backend running as another user creates its socket here.
            std::fs::set_permissions(
                dir.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o777),
            )
            .unwrap();
        }
        let socket = socket.map_or_else(|| dir.path().join("dev.sock"), Path::to_path_buf);
        let program = example_path(name);
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let mut child = cmd
            .arg("--socket-path")
            .arg(&socket)
            .args(args)
            .env(
                "RUST_LOG",
                rust_log.map_or_else(
                    || std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                    str::to_string,
                ),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {prefix:?} {}: {e}", program.display()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[backend] {line}");
                if tx.send(line).is_err() {
                    // Keep draining so the backend never blocks on a full pipe.
                    continue;
                }
            }
        });
        let mut p = BackendProcess {
            child,
            socket,
            log: rx,
            startup: Vec::new(),
            _dir: dir,
        };
        p.startup = p.log_until("listening on", Duration::from_secs(30));
        p
    }

    /// Waits for a log line containing `needle`; panics after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("backend never logged {needle:?}: {e}"),
            }
        }
    }

    /// The log lines up to and including the next one containing `needle`;
    /// panics after `timeout`.
    pub fn log_until(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                Err(e) => panic!("backend never logged {needle:?}: {e}"),
            }
        }
    }

    /// The program's pid: in a sandbox, the supervisor that holds the sockets.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The process that serves the device: the program itself without a sandbox, else
    /// the confined process under it (a namespace sandbox puts a keeper in between).
    /// Call it once a frontend has been served (the device process exists by then).
    pub fn device_pid(&self) -> i32 {
        let mut pid = self.pid();
        while let [only] = children(pid)[..] {
            pid = only;
        }
        pid
    }

    /// Waits for the backend to end by itself (a crash it was told to have).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// Sends `sig` and waits for the exit status.
    pub fn signal_and_wait(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for BackendProcess {
    /// Kills the program and waits until its device process is gone too (it dies with
    /// its supervisor, a moment later): what it held, an image lock say, is released
    /// once this returns.
    fn drop(&mut self) {
        let mut below = Vec::new();
        let mut pid = self.pid();
        while let [only] = children(pid)[..] {
            below.extend(pidfd(only));
            pid = only;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for fd in below {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            use std::os::fd::AsFd;
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(10_000u16));
        }
    }
}

/// A pidfd for `pid` (readable once it has ended), if it still exists.
pub fn pidfd(pid: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative result is a new fd that nothing else owns.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// One HTTP request for `path` on a program's statistics socket (`--stats-socket`):
/// the body of a complete `200 OK` answer, or what went wrong.
pub fn stats_get(socket: &Path, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("statistics at {}: {e}", socket.display()))?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("statistics request: {e}"))?;
    let mut answer = String::new();
    c.read_to_string(&mut answer)
        .map_err(|e| format!("statistics answer: {e}"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.0 200 OK") {
        return Err(format!("statistics answer: {head}"));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no length in {head:?}"))?;
    if body.len() != len {
        return Err(format!("a body of {} bytes, {len} announced", body.len()));
    }
    Ok(body.to_string())
}

/// Whether the dirty log in `log` (one bit per 4 KiB page, as SET_LOG_BASE shares it)
/// marks page `gpa` as written.
pub fn page_logged(log: &vhost_user_sync::frontend::FrontendMemory, gpa: u64) -> bool {
    let mut b = [0u8; 1];
    log.table().read(gpa / 4096 / 8, &mut b).unwrap();
    b[0] & (1 << ((gpa / 4096) % 8)) != 0
}

/// A seccomp filter that makes `io_uring_setup` fail with ENOSYS, then runs the program
/// in its arguments: a kernel without io_uring, as far as the program can tell.
const NO_IO_URING_C: &str = r#"
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    if (argc < 2 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
        return 111;
    execv(argv[1], argv + 1);
    return 112;
}
"#;

/// Builds (with `cc`, in `dir`) the wrapper of [`NO_IO_URING_C`] and returns its path: a
/// command prefix under which a program finds no io_uring.
pub fn no_io_uring_wrapper(dir: &Path) -> PathBuf {
    let src = dir.join("no_io_uring.c");
    let wrapper = dir.join("no_io_uring");
    std::fs::write(&src, NO_IO_URING_C).unwrap();
    let cc = Command::new("cc")
        .arg("-o")
        .arg(&wrapper)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) to build the seccomp wrapper");
    assert!(cc.success(), "building the seccomp wrapper failed");
    wrapper
}
