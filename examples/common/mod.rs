//! Conventions shared by the backend programs: where the frontend comes from, the
//! sandbox the device process runs in, signals, statistics and `--print-capabilities`.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use vhost_user_sync::backend::{DeviceSnapshot, DeviceStats, Shutdown};
use vhost_user_sync::sandbox::{PathAccess, Sandbox, SandboxMode, SandboxNeeds, SeccompMode};
use vhost_user_sync::sys::unix::shutdown_on_signals;
use vhost_user_sync::VhostUserListener;

mod stats_endpoint;

/// Where to get frontends, as the vhost-user backend conventions name it.
#[derive(clap::Args, Debug)]
pub struct ListenArgs {
    /// Unix socket path to listen on (or, with --client, to connect to).
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<String>,
    /// An inherited socket fd (listening or connected), e.g. from socket activation.
    #[arg(long, value_name = "FD", conflicts_with = "socket_path")]
    pub fd: Option<RawFd>,
    /// Connect to a frontend listening on --socket-path, reconnecting after it leaves.
    #[arg(long, requires = "socket_path")]
    pub client: bool,
    /// Serve this many devices, one per socket: PATH0, PATH1, ... (each with its own
    /// threads; one process for many guests).
    #[arg(long, default_value_t = 1, value_name = "N", conflicts_with = "fd",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub socket_count: u16,
    /// Keep polling a device's rings for this many microseconds after the last request
    /// before sleeping until the next kick (0: never poll). Polling spends CPU to save
    /// kicks and wake-ups under load.
    #[arg(long, default_value_t = 0, value_name = "US",
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub busy_poll_us: u64,
    /// Give a device up when a worker has not answered the connection for this many
    /// milliseconds (device code stuck in a blocking call): that connection is closed
    /// and the next frontend is served.
    #[arg(long, default_value_t = 10_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub worker_timeout_ms: u64,
    /// Serve the devices' counters on this unix socket while running (HTTP: GET /metrics
    /// in the Prometheus text format, any other path as JSON). SIGUSR1 logs them too.
    #[arg(long, value_name = "PATH")]
    pub stats_socket: Option<String>,
    /// Print the backend's capabilities as JSON and exit.
    #[arg(long)]
    pub print_capabilities: bool,
    #[command(flatten)]
    pub confine: SandboxArgs,
}

/// How the device process is confined (`vhost_user_sync::sandbox`).
#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    /// Confine the device process: `namespace` (new mount, pid, ipc and network
    /// namespaces, an empty read-only root), `chroot` (an empty directory) or `none`.
    /// Default: the strongest this machine allows. This process stays outside, holds
    /// the sockets, and starts a new device process when one crashes.
    #[arg(long, value_name = "MODE", value_parser = ["namespace", "chroot", "none"])]
    pub sandbox: Option<String>,
    /// What a system call outside the device's allowlist does: `kill` the device
    /// process, `log` it (kernel log, audit type 1326) and let it run, or `none` (no
    /// filter).
    #[arg(long, value_name = "ACTION", default_value = "kill",
          value_parser = ["kill", "log", "none"])]
    pub seccomp: String,
    /// Run the device process as this user (a name or a uid; needs root).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
}

/// Sets up logging (RUST_LOG, default info).
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

/// What a program's device process needs besides its listeners: the fds it opened
/// before confinement (an image, taps, an entropy source) and the device's
/// [`SandboxNeeds`].
pub struct DeviceProcess {
    /// Fds the device process keeps.
    pub fds: Vec<RawFd>,
    /// What the device declared (`Device::sandbox_needs`).
    pub needs: SandboxNeeds,
    /// The device's own counters, for SIGUSR1 and `--stats-socket`.
    pub counters: Option<DeviceCounters>,
}

/// Runs the device process: `serve` with SIGINT/SIGTERM triggering `shutdown` and the
/// counters reported (SIGUSR1, `--stats-socket`). Confined as `--sandbox`, `--seccomp`
/// and `--user` say, in a child this process supervises (restarted when it crashes);
/// in this process itself with `--sandbox none --seccomp none`.
pub fn run_device_process<F>(
    args: &ListenArgs,
    shutdown: &Shutdown,
    listeners: &mut [VhostUserListener],
    device: DeviceProcess,
    mut serve: F,
) -> Result<(), String>
where
    F: FnMut(&mut [VhostUserListener]) -> Result<(), String>,
{
    // Bound here, outside any sandbox; served from the device process.
    let stats_socket = match &args.stats_socket {
        Some(path) => Some((
            path.clone(),
            stats_endpoint::bind(path).map_err(|e| format!("--stats-socket {path}: {e}"))?,
        )),
        None => None,
    };
    let mut run = |listeners: &mut [VhostUserListener]| -> Result<(), String> {
        watch_signals(shutdown);
        let stats = match &stats_socket {
            Some((_, l)) => Some(l.try_clone().map_err(|e| format!("--stats-socket: {e}"))?),
            None => None,
        };
        report_stats(listeners, stats, device.counters.clone())?;
        serve(listeners)
    };
    let result = match sandbox_for(
        args,
        listeners,
        &device,
        stats_socket.as_ref().map(|s| &s.1),
    )? {
        None => run(listeners),
        Some(sandbox) => {
            // This process removes the socket files when it exits; device processes
            // never do.
            let _socket_files: Vec<_> = listeners
                .iter_mut()
                .filter_map(|l| l.take_parent_process_resources())
                .collect();
            sandbox
                .supervise(|| match run(listeners) {
                    Ok(()) => 0,
                    Err(e) => {
                        log::error!("{e}");
                        1
                    }
                })
                .map(drop)
                .map_err(|e| e.to_string())
        }
    };
    if let Some((path, _)) = &stats_socket {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// The sandbox the arguments ask for, or `None` for none at all.
fn sandbox_for(
    args: &ListenArgs,
    listeners: &[VhostUserListener],
    device: &DeviceProcess,
    stats: Option<&UnixListener>,
) -> Result<Option<Sandbox>, String> {
    let c = &args.confine;
    let seccomp: SeccompMode = c.seccomp.parse()?;
    let mode = match &c.sandbox {
        Some(m) => m.parse()?,
        None => {
            let (mode, why) = SandboxMode::strongest_available();
            log::info!("sandbox: {mode} ({why}; --sandbox to choose)");
            mode
        }
    };
    if mode == SandboxMode::None && seccomp == SeccompMode::None && c.user.is_none() {
        log::warn!("sandbox: none; the device runs with every privilege of this process");
        return Ok(None);
    }
    let mut needs = device.needs.clone();
    if args.client {
        // A --client device connects by path, again after each disconnect.
        let path = args.socket_path.as_deref().unwrap_or_default();
        let dir = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty());
        needs = needs.path(dir.unwrap_or(Path::new("/")), PathAccess::ReadWrite);
    }
    let mut keep: Vec<RawFd> = listeners.iter().filter_map(|l| l.raw_fd()).collect();
    keep.extend(&device.fds);
    keep.extend(stats.map(|l| l.as_raw_fd()));
    let mut sandbox = Sandbox::new(mode)
        .seccomp(seccomp)
        .keep_fds(&keep)
        .needs(&needs);
    if let Some(name) = &c.user {
        let user = match name.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(uid.into()),
            Err(_) => nix::unistd::User::from_name(name),
        }
        .map_err(|e| format!("--user {name}: {e}"))?
        .ok_or_else(|| format!("--user {name}: no such user"))?;
        sandbox = sandbox.user(user.uid, user.gid);
    }
    Ok(Some(sandbox))
}

/// SIGINT and SIGTERM trigger `shutdown`; SIGUSR1 is blocked in every thread started
/// from here on, for the statistics thread to take.
fn watch_signals(shutdown: &Shutdown) {
    let mut usr1 = SigSet::empty();
    usr1.add(Signal::SIGUSR1);
    if let Err(e) = usr1.thread_block() {
        log::warn!("cannot block SIGUSR1: {e}");
    }
    if let Err(e) = shutdown_on_signals(shutdown) {
        log::warn!("cannot watch signals: {e}");
    }
}

/// A device's own counters by name (blk: requests by type; net: packets and bytes).
pub type DeviceCounters = std::sync::Arc<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// Reports the counters of every listener's device, and `device`'s own, while the program
/// runs: a log line each on SIGUSR1 (blocked by [`watch_signals`]), and on the
/// `--stats-socket` listener.
fn report_stats(
    listeners: &[VhostUserListener],
    socket: Option<UnixListener>,
    device: Option<DeviceCounters>,
) -> Result<(), String> {
    let stats: Vec<DeviceStats> = listeners
        .iter()
        .filter_map(|l| l.stats().cloned())
        .collect();
    if let Some(socket) = socket {
        stats_endpoint::serve(socket, stats.clone(), device.clone())
            .map_err(|e| format!("--stats-socket: {e}"))?;
    }
    let mut usr1 = SigSet::empty();
    usr1.add(Signal::SIGUSR1);
    let spawned = std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || {
            while usr1.wait().is_ok() {
                for (i, s) in stats.iter().enumerate() {
                    log_snapshot(i, &s.snapshot());
                }
                if let Some(device) = &device {
                    let line: Vec<String> =
                        device().iter().map(|(n, v)| format!("{n}={v}")).collect();
                    log::info!("stats: device counters: {}", line.join(" "));
                }
            }
        });
    spawned
        .map(drop)
        .map_err(|e| format!("cannot start the statistics thread: {e}"))
}

/// One line for the device on listener `i`, one per queue.
fn log_snapshot(i: usize, s: &DeviceSnapshot) {
    log::info!(
        "stats: listener {i}: device {}, {}, {} connection(s), up {:.1} s",
        s.device.as_deref().unwrap_or("-"),
        if s.connected { "connected" } else { "idle" },
        s.connections,
        s.uptime.as_secs_f64()
    );
    for (q, c) in s.queues.iter().enumerate() {
        let fields: Vec<String> = stats_endpoint::queue_fields(c)
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        log::info!("stats: listener {i} queue {q}: {}", fields.join(" "));
    }
}

/// Prints `{"type": ..., "features": [...]}`.
pub fn print_capabilities(device_type: &str, features: &[&str]) {
    let list = features
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect::<Vec<_>>()
        .join(", ");
    println!("{{\"type\": \"{device_type}\", \"features\": [{list}]}}");
}

/// Opens the listeners the arguments ask for: one, or `--socket-count` of them at
/// `PATH0`, `PATH1`, ... Without `--fd`, `--socket-path` or `--client`, sockets a service
/// manager passed (systemd socket activation, `LISTEN_FDS`) come first: one device on
/// each.
pub fn listeners(
    args: &ListenArgs,
    default_path: &str,
    shutdown: &Shutdown,
) -> Result<Vec<VhostUserListener>, String> {
    if args.fd.is_none() && args.socket_path.is_none() && !args.client {
        let passed = vhost_user_sync::sys::unix::listen_fds();
        if !passed.is_empty() {
            log::info!(
                "socket activation: serving {} passed socket(s)",
                passed.len()
            );
            return passed
                .into_iter()
                .map(|fd| {
                    VhostUserListener::from_fd(fd)
                        .map(|l| configure(l, args, shutdown))
                        .map_err(|e| format!("passed fd {fd}: {e}"))
                })
                .collect();
        }
    }
    if args.socket_count == 1 {
        return Ok(vec![listener(args, default_path, shutdown)?]);
    }
    let base = args.socket_path.as_deref().unwrap_or(default_path);
    (0..args.socket_count)
        .map(|i| {
            let path = format!("{base}{i}");
            let l = if args.client {
                VhostUserListener::client(&path, Duration::from_secs(1))
            } else {
                VhostUserListener::new(&path, None).map_err(|e| format!("{path}: {e}"))?
            };
            Ok(configure(l, args, shutdown))
        })
        .collect()
}

/// Serves every listener, each connection with a fresh device from `make`, until all of
/// them have stopped (on a signal): idle listeners wait together on this thread, a
/// connected device gets threads of its own while its frontend stays.
pub fn serve_all<D, F>(listeners: &mut [VhostUserListener], make: F) -> Result<(), String>
where
    D: vhost_user_sync::device::Device,
    F: Fn() -> D + Sync,
{
    if let [one] = listeners {
        return one.serve(&make).map_err(|e| e.to_string());
    }
    VhostUserListener::serve_all(listeners, |_| make()).map_err(|e| e.to_string())
}

/// Opens the listener the arguments ask for, with `default_path` when none is given.
pub fn listener(
    args: &ListenArgs,
    default_path: &str,
    shutdown: &Shutdown,
) -> Result<VhostUserListener, String> {
    let l = if let Some(fd) = args.fd {
        VhostUserListener::from_fd(fd).map_err(|e| e.to_string())?
    } else {
        let path = args.socket_path.as_deref().unwrap_or(default_path);
        if args.client {
            VhostUserListener::client(path, Duration::from_secs(1))
        } else {
            VhostUserListener::new(path, None).map_err(|e| e.to_string())?
        }
    };
    Ok(configure(l, args, shutdown))
}

/// The settings every listener of the program shares.
fn configure(l: VhostUserListener, args: &ListenArgs, shutdown: &Shutdown) -> VhostUserListener {
    let l = l
        .with_shutdown(shutdown.clone())
        .with_stats(DeviceStats::new())
        .with_worker_timeout(Duration::from_millis(args.worker_timeout_ms));
    if args.busy_poll_us > 0 {
        l.with_busy_poll(Duration::from_micros(args.busy_poll_us))
    } else {
        l
    }
}
