//! What a distribution installs beside the programs (`docs/deploy/`): the vhost-user
//! descriptor files QEMU's `docs/interop/vhost-user.json` defines, and systemd units
//! with socket activation. The rng units are run the way systemd runs them: the socket
//! bound by `systemd-socket-activate` and passed as fd 3 (`LISTEN_FDS`), the program
//! started on the first connection.

#[path = "support/backend.rs"]
mod backend;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use backend::{capabilities, example_path, required_program, TempDir};
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};

const T: Duration = Duration::from_secs(10);

/// Backend types of QEMU's `VHostUserBackendType`.
const BACKEND_TYPES: &[&str] = &[
    "9p",
    "balloon",
    "block",
    "caif",
    "console",
    "crypto",
    "gpu",
    "input",
    "net",
    "rng",
    "rpmsg",
    "rproc-serial",
    "scsi",
    "vsock",
    "fs",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy")
}

/// The example program an installed binary name stands for.
fn example_for(binary: &str) -> &'static str {
    match Path::new(binary).file_name().and_then(|n| n.to_str()) {
        Some("vhost-user-sync-blk") => "blk_backend",
        Some("vhost-user-sync-net") => "net_backend",
        Some("vhost-user-sync-rng") => "rng_backend",
        other => panic!("no program is installed as {other:?}"),
    }
}

#[test]
fn descriptor_files_follow_the_schema_and_name_each_program_by_its_type() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(deploy_dir().join("vhost-user")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let fields = doc.as_object().expect("an object");
        for key in fields.keys() {
            assert!(
                ["description", "type", "binary", "tags"].contains(&key.as_str()),
                "{}: {key} is not a VhostUserBackend member",
                path.display()
            );
        }
        let get = |k: &str| {
            fields[k]
                .as_str()
                .unwrap_or_else(|| panic!("{}: {k} must be a string", path.display()))
        };
        let (kind, binary) = (get("type"), get("binary"));
        assert!(!get("description").is_empty());
        assert!(BACKEND_TYPES.contains(&kind), "{kind}");
        assert!(Path::new(binary).is_absolute(), "{binary}");
        // The program reports the same type itself.
        let caps: serde_json::Value =
            serde_json::from_str(&capabilities(example_for(binary))).unwrap();
        assert_eq!(caps["type"], kind, "{}", path.display());
        seen.push(kind.to_string());
    }
    seen.sort();
    assert_eq!(seen, ["block", "net", "rng"]);
}

/// `key=` lines of a unit file.
fn unit_values(path: &Path, key: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_service_runs_an_installed_program_with_options_it_has() {
    let dir = deploy_dir().join("systemd");
    let mut services = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let Some(stem) = name.strip_suffix(".service") else {
            continue;
        };
        services += 1;
        // Each service has its socket, on a path of its own.
        let socket = dir.join(format!("{stem}.socket"));
        let listen = unit_values(&socket, "ListenStream");
        assert_eq!(listen.len(), 1, "{}", socket.display());
        assert!(listen[0].starts_with('/') && listen[0].contains("%i"));
        assert_eq!(unit_values(&socket, "Accept"), ["no"]);
        let exec = unit_values(&path, "ExecStart");
        assert_eq!(exec.len(), 1, "{name}");
        let mut words = exec[0].split_whitespace();
        let program = example_for(words.next().unwrap());
        let help = Command::new(example_path(program))
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for option in words.filter(|w| w.starts_with("--")) {
            assert!(
                help.contains(&format!("{option} ")),
                "{name}: {program} has no {option}"
            );
        }
        // No socket path of its own: the socket comes from the service manager.
        assert!(!exec[0].contains("--socket-path") && !exec[0].contains("--fd"));
    }
    assert_eq!(services, 3);
}

/// The backend of `systemd-socket-activate`, killed when dropped.
struct Activated(std::process::Child);

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn entropy_from(socket: &Path) -> Vec<u8> {
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
    let mut fe = Frontend::connect(socket).unwrap();
    fe.negotiate(u64::MAX, u64::MAX).unwrap();
    fe.set_mem_table(&mem).unwrap();
    let mut q = DriverQueue::new(&mem, 0, 64).unwrap();
    q.attach(&mut fe, &mem).unwrap();
    let buf = mem.alloc(4096, 8).unwrap();
    q.add(mem.table(), &[(buf, 4096, true)]).unwrap();
    q.kick(mem.table()).unwrap();
    let used = q.wait_used(mem.table(), T).unwrap();
    assert_eq!(used.len, 4096);
    let mut out = vec![0u8; 4096];
    mem.table().read(buf, &mut out).unwrap();
    out
}

#[test]
fn the_rng_units_run_under_socket_activation() {
    let Some(activate) = required_program("systemd-socket-activate", "apt-get install systemd")
    else {
        return;
    };
    let dir = TempDir::new("activation");
    let units = deploy_dir().join("systemd");
    let listen = &unit_values(&units.join("vhost-user-sync-rng@.socket"), "ListenStream")[0];
    let socket = dir
        .path()
        .join(Path::new(&listen.replace("%i", "t")).file_name().unwrap());
    let exec = &unit_values(&units.join("vhost-user-sync-rng@.service"), "ExecStart")[0];
    let mut words = exec.split_whitespace();
    let program = example_path(example_for(words.next().unwrap()));
    let mut cmd = Command::new(activate);
    cmd.arg("-l")
        .arg(&socket)
        .arg(&program)
        .args(words)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Its own process group, so that the kill reaches the backend it execs into.
    cmd.process_group(0);
    let mut child = Activated(cmd.spawn().unwrap());
    // The socket file appears at bind(), before listen(): wait for the line the
    // activator prints once it listens, not for the file.
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("Listening on") {
        let read = stderr.read_line(&mut log).unwrap();
        assert!(read > 0, "the activator ended: {log}");
    }
    assert!(socket.exists(), "no socket at {}: {log}", socket.display());
    // Two connections, one after the other, to the one process the first started.
    let a = entropy_from(&socket);
    let b = entropy_from(&socket);
    assert_ne!(a, b);
    for bytes in [&a, &b] {
        let distinct = bytes.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(distinct > 200, "not random: {distinct} distinct bytes");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.0.wait().unwrap();
    stderr.read_to_string(&mut log).unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("socket activation: serving 1 passed socket(s)"),
        "{log}"
    );
    assert_eq!(log.matches("frontend connected").count(), 2, "{log}");
}
