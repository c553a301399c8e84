//! The sandbox, from the library path a VMM uses: this binary forks a confined probe
//! device (`Sandbox::supervise`) when started with `SANDBOX_PROBE_SOCKET` set, and
//! otherwise runs the cases below against such processes of itself, one at a time
//! (each case checks processes, namespaces and fds in `/proc`, so no parallel harness).
//!
//! Needs root or unprivileged user namespaces for the namespace cases; under `CI=true`
//! a machine that allows neither fails instead of skipping.

mod probe_device;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::Signal;
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
use vhost_user_sync::sandbox::{PathAccess, Sandbox, SandboxMode, SandboxNeeds, SeccompMode};
use vhost_user_sync::VhostUserListener;

fn main() {
    if let Some(socket) = std::env::var_os("SANDBOX_PROBE_SOCKET") {
        std::process::exit(serve(Path::new(&socket)));
    }
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let cases: &[(&str, fn())] = &[
        ("namespace_child_is_confined", namespace_child_is_confined),
        (
            "forbidden_syscall_is_killed_and_restarted",
            forbidden_syscall_is_killed_and_restarted,
        ),
        (
            "log_mode_lets_the_call_through",
            log_mode_lets_the_call_through,
        ),
        (
            "chroot_child_sees_an_empty_root",
            chroot_child_sees_an_empty_root,
        ),
        ("user_switch_drops_root", user_switch_drops_root),
        (
            "sigterm_ends_child_and_parent",
            sigterm_ends_child_and_parent,
        ),
    ];
    let (mode, why) = SandboxMode::strongest_available();
    if mode != SandboxMode::Namespace {
        let msg = format!("no namespace sandbox on this machine: {why}");
        if ci() {
            panic!("{msg} (CI=true: not skipping)");
        }
        eprintln!("skipping the sandbox cases: {msg}");
        return;
    }
    for (name, case) in cases {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        eprintln!("sandbox case {name} ...");
        case();
        eprintln!("sandbox case {name}: ok");
    }
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The supervisor side: listener in the parent, probe device in a confined child.
fn serve(socket: &Path) -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let env = |k: &str| std::env::var(k).ok();
    let mode: SandboxMode = env("SANDBOX_PROBE_MODE").unwrap().parse().unwrap();
    let seccomp: SeccompMode = env("SANDBOX_PROBE_SECCOMP").unwrap().parse().unwrap();
    let mut keep = Vec::new();
    let mut listener = VhostUserListener::new(socket.to_str().unwrap(), Some(&mut keep)).unwrap();
    let _socket_file = listener.take_parent_process_resources();
    // An fd the parent holds and does not pass on: the child must not have it.
    let _canary = env("SANDBOX_PROBE_CANARY").map(|p| std::fs::File::open(p).unwrap());
    let mut needs = SandboxNeeds::new();
    if let Some(p) = env("SANDBOX_PROBE_BIND") {
        needs = needs.path(p, PathAccess::ReadOnly);
    }
    let mut sandbox = Sandbox::new(mode)
        .seccomp(seccomp)
        .keep_fds(&keep)
        .needs(&needs)
        .max_restarts(3, Duration::from_secs(60));
    if let Some(id) = env("SANDBOX_PROBE_USER") {
        let id: u32 = id.parse().unwrap();
        sandbox = sandbox.user(id.into(), id.into());
    }
    let shutdown = listener.shutdown_handle();
    let result = sandbox.supervise(|| {
        if let Err(e) = vhost_user_sync::sys::unix::shutdown_on_signals(&shutdown) {
            log::error!("{e}");
            return 1;
        }
        match listener.serve(|| probe_device::ProbeDevice) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("{e}");
                1
            }
        }
    });
    match result {
        Ok(exit) => {
            log::info!("supervisor: done, last device process {exit}");
            0
        }
        Err(e) => {
            log::error!("supervisor: {e}");
            2
        }
    }
}

/// A supervisor process of this binary, and the lines it logs.
struct Supervisor {
    child: Child,
    socket: PathBuf,
    log: mpsc::Receiver<String>,
    dir: PathBuf,
}

impl Supervisor {
    fn start(mode: &str, seccomp: &str, extra: &[(&str, String)]) -> Supervisor {
        let dir = std::env::temp_dir().join(format!(
            "sandbox-case-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("probe.sock");
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env("SANDBOX_PROBE_SOCKET", &socket)
            .env("SANDBOX_PROBE_MODE", mode)
            .env("SANDBOX_PROBE_SECCOMP", seccomp)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  | {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let s = Supervisor {
            child,
            socket,
            log,
            dir,
        };
        s.wait_log("started", Duration::from_secs(20));
        s
    }

    /// Waits for a log line containing `needle`; panics after `timeout`.
    fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?} within {timeout:?}"),
            }
        }
    }

    /// The device process: the supervisor's child, or in namespace mode the keeper's.
    fn device_pid(&self, keeper: bool) -> i32 {
        let first = children(self.child.id() as i32);
        assert_eq!(first.len(), 1, "the supervisor has one child: {first:?}");
        if !keeper {
            return first[0];
        }
        let second = children(first[0]);
        assert_eq!(second.len(), 1, "the keeper has one child: {second:?}");
        second[0]
    }

    fn stop(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        )
        .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// A frontend on the probe device, one request at a time.
struct Probe {
    _fe: Frontend,
    mem: FrontendMemory,
    q: DriverQueue,
}

impl Probe {
    fn connect(socket: &Path) -> Probe {
        let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
        let mut fe = Frontend::connect(socket).unwrap();
        fe.negotiate(u64::MAX, u64::MAX).unwrap();
        let mut q = DriverQueue::new(&mem, 0, 64).unwrap();
        fe.set_mem_table(&mem).unwrap();
        q.attach(&mut fe, &mem).unwrap();
        Probe { _fe: fe, mem, q }
    }

    /// Sends `command`; the reply.
    fn ask(&mut self, command: &str) -> Option<String> {
        self.ask_within(command, Duration::from_secs(10))
    }

    /// Sends `command`; the reply, or `None` when none came within `timeout`.
    fn ask_within(&mut self, command: &str, timeout: Duration) -> Option<String> {
        let req = self.mem.alloc(command.len() as u64, 8).unwrap();
        let resp = self.mem.alloc(256, 8).unwrap();
        self.mem.table().write(req, command.as_bytes()).unwrap();
        self.q
            .add(
                self.mem.table(),
                &[(req, command.len() as u32, false), (resp, 256, true)],
            )
            .unwrap();
        self.q.kick(self.mem.table()).ok()?;
        let used = self.q.wait_used(self.mem.table(), timeout).ok()?;
        let mut out = vec![0u8; used.len as usize];
        self.mem.table().read(resp, &mut out).unwrap();
        Some(String::from_utf8(out).unwrap())
    }
}

fn proc_status(pid: i32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

fn namespace_child_is_confined() {
    let dir = std::env::temp_dir().join(format!("sandbox-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bound = dir.join("bound.txt");
    let secret = dir.join("secret.txt");
    std::fs::write(&bound, "bound contents").unwrap();
    std::fs::write(&secret, "host secret").unwrap();
    let sup = Supervisor::start(
        "namespace",
        "kill",
        &[
            ("SANDBOX_PROBE_BIND", bound.display().to_string()),
            ("SANDBOX_PROBE_CANARY", secret.display().to_string()),
        ],
    );
    let mut probe = Probe::connect(&sup.socket);
    assert_eq!(probe.ask("ping").as_deref(), Some("pong"));
    // Only the declared path is in its root, and read-only.
    assert_eq!(
        probe.ask(&format!("read {}", bound.display())).as_deref(),
        Some("bound contents")
    );
    assert_eq!(
        probe.ask(&format!("write {}", bound.display())).as_deref(),
        Some("errno 30")
    ); // EROFS
    assert_eq!(
        probe.ask(&format!("open {}", secret.display())).as_deref(),
        Some("errno 2")
    ); // ENOENT
    assert_eq!(probe.ask("open /etc/passwd").as_deref(), Some("errno 2"));
    assert_eq!(probe.ask("write /newfile").as_deref(), Some("errno 2"));

    let pid = sup.device_pid(true);
    let me = "self";
    for kind in ["mnt", "pid", "ipc", "net"] {
        assert_ne!(ns(&pid.to_string(), kind), ns(me, kind), "{kind} namespace");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(pid, "Seccomp"), "2");
    assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");
    assert_eq!(proc_status(pid, "CapBnd"), "0000000000000000");
    // Pid 1 of its own pid namespace.
    assert_eq!(
        proc_status(pid, "NSpid").split_whitespace().last(),
        Some("1")
    );
    // Its fds: stdio, the listener the parent kept for it, and what it opened itself
    // (poll, eventfds, the connection, guest memory). Nothing else of the parent's.
    let canary = std::fs::canonicalize(&secret).unwrap();
    let listener_inode = socket_inode(&sup);
    let mut has_listener = false;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let target = std::fs::read_link(entry.path()).unwrap();
        assert_ne!(
            target, canary,
            "the parent's canary fd leaked into the child"
        );
        let t = target.to_string_lossy();
        has_listener |= t == format!("socket:[{listener_inode}]");
        assert!(
            t.starts_with("socket:")
                || t.starts_with("anon_inode:")
                || t.starts_with("/memfd:")
                || t.starts_with("pipe:")
                || t == "/dev/null"
                || t.starts_with("/dev/pts")
                || entry.file_name().to_str().unwrap().parse::<i32>().unwrap() <= 2,
            "unexpected fd {:?} -> {t}",
            entry.file_name()
        );
    }
    assert!(
        has_listener,
        "the child serves on the listener the parent passed"
    );
    drop(probe);
    drop(sup);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The inode of the listening socket the supervisor created (from its fd table).
fn socket_inode(sup: &Supervisor) -> String {
    let parent = sup.child.id();
    let sockets: Vec<String> = std::fs::read_dir(format!("/proc/{parent}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            t.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        sockets.len(),
        1,
        "the supervisor holds the listener only: {sockets:?}"
    );
    sockets[0].clone()
}

fn forbidden_syscall_is_killed_and_restarted() {
    let sup = Supervisor::start("namespace", "kill", &[]);
    let first = sup.device_pid(true);
    let mut probe = Probe::connect(&sup.socket);
    assert_eq!(probe.ask("ping").as_deref(), Some("pong"));
    assert_eq!(
        probe.ask("forbidden"),
        None,
        "the device answered after a forbidden call"
    );
    let line = sup.wait_log("SIGSYS", Duration::from_secs(10));
    assert!(line.contains("starting another"), "{line}");
    sup.wait_log("started", Duration::from_secs(10));
    // The next connection is served by a new process.
    let mut probe = Probe::connect(&sup.socket);
    assert_eq!(probe.ask("ping").as_deref(), Some("pong"));
    assert_ne!(sup.device_pid(true), first);
    drop(probe);
    let status = sup.stop();
    assert_eq!(status.code(), Some(0));
}

fn log_mode_lets_the_call_through() {
    let sup = Supervisor::start("namespace", "log", &[]);
    let mut probe = Probe::connect(&sup.socket);
    assert_eq!(probe.ask("forbidden").as_deref(), Some("survived"));
    assert_eq!(proc_status(sup.device_pid(true), "Seccomp"), "2");
}

fn chroot_child_sees_an_empty_root() {
    let sup = Supervisor::start("chroot", "kill", &[]);
    let mut probe = Probe::connect(&sup.socket);
    // An empty directory of mode 0, and no capability to look past that.
    assert_eq!(probe.ask("open /etc/passwd").as_deref(), Some("errno 13"));
    assert_eq!(probe.ask("open /").as_deref(), Some("errno 13"));
    let pid = sup.device_pid(false);
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert!(
        root.to_string_lossy().ends_with("(deleted)"),
        "the child's root is the removed empty directory: {}",
        root.display()
    );
    assert_eq!(proc_status(pid, "Seccomp"), "2");
}

fn user_switch_drops_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("  (not root: --user is refused, checked by the unit tests)");
        return;
    }
    let sup = Supervisor::start(
        "namespace",
        "kill",
        &[("SANDBOX_PROBE_USER", "65534".into())],
    );
    let mut probe = Probe::connect(&sup.socket);
    assert_eq!(probe.ask("ping").as_deref(), Some("pong"));
    let pid = sup.device_pid(true);
    assert_eq!(
        proc_status(pid, "Uid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["65534"; 4]
    );
    assert_eq!(
        proc_status(pid, "Gid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["65534"; 4]
    );
    assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");
    // The uid change cleared nothing that ties it to its parent: a supervisor killed
    // outright takes the keeper and the device with it.
    let device = pidfd(pid);
    let mut sup = sup;
    sup.child.kill().unwrap();
    sup.child.wait().unwrap();
    assert!(
        exits_within(&device, Duration::from_secs(10)),
        "device process {pid} outlived its supervisor"
    );
    drop(probe);
}

/// A pidfd for `pid` (readable once the process has ended).
fn pidfd(pid: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    assert!(
        fd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the fd was just returned to us and is owned by nothing else.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// Whether the process behind `pidfd` ends within `timeout`.
fn exits_within(pidfd: &std::os::fd::OwnedFd, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout.as_millis() as i32).unwrap();
    poll(&mut fds, ms).unwrap() == 1
}

fn sigterm_ends_child_and_parent() {
    let sup = Supervisor::start("namespace", "kill", &[]);
    let mut probe = Probe::connect(&sup.socket);
    assert_eq!(probe.ask("ping").as_deref(), Some("pong"));
    let device = sup.device_pid(true);
    let socket = sup.socket.clone();
    let status = sup.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "the supervisor exits cleanly on SIGTERM"
    );
    assert!(
        !Path::new(&format!("/proc/{device}")).exists(),
        "device process {device} still there"
    );
    assert!(!socket.exists(), "the parent removed its socket file");
    drop(probe);
}
