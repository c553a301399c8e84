//! `--scale N`: N devices on one backend process. Measures what each device costs the
//! backend (resident memory and threads, from /proc/<pid>, the pid from SO_PEERCRED)
//! and the kick-to-call latency with every device active: each device keeps one small
//! request in flight, and the driver serves whichever device's call fires.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::device::Device;
use crate::error::{bail, Context, Result};
use crate::report::{flat, stream_json, stream_line, Json};
use crate::ring::wait_calls;
use crate::stats::{Meter, Stream, Units};
use crate::watchdog::{Watchdog, SETUP_TIMEOUT};

/// The one request each device keeps posting.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Index into the device's rings.
    pub ring: usize,
    /// The buffers `(gpa, len, device_writable)`.
    pub bufs: Vec<(u64, u32, bool)>,
    /// Indirect table for the buffers, if the workload uses one.
    pub table: Option<u64>,
    /// A virtio-blk status byte to check after each completion.
    pub status: Option<u64>,
}

/// What /proc says about the backend.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    rss_kib: u64,
    rss_anon_kib: u64,
    threads: u64,
}

fn sample(pid: i32) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context(format_args!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .context(format_args!("listing /proc/{pid}/task"))?
        .count() as u64;
    Ok(ProcSample {
        rss_kib: field("VmRSS:"),
        rss_anon_kib: field("RssAnon:"),
        threads,
    })
}

/// The process serving the devices behind `socket`: SO_PEERCRED names the process that
/// listens (a sandboxed program's supervisor), [`serving_process`] the one below it.
fn peer_pid(socket: &Path) -> Result<i32> {
    let s =
        UnixStream::connect(socket).context(format_args!("connecting to {}", socket.display()))?;
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .context("SO_PEERCRED")?;
    Ok(serving_process(cred.pid()))
}

/// `pid`'s only child, followed down while there is exactly one: a sandboxed
/// program's device process under its supervisor (and a namespace sandbox's keeper).
pub fn serving_process(mut pid: i32) -> i32 {
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        match children.split_whitespace().collect::<Vec<_>>()[..] {
            [only] => match only.parse() {
                Ok(child) => pid = child,
                Err(_) => return pid,
            },
            _ => return pid,
        }
    }
}

/// Lets this process hold the fds of many devices.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn submit(dev: &mut Device, p: &Probe) -> Result<()> {
    let mem = dev.mem.table();
    let ring = &mut dev.rings[p.ring];
    ring.submit(mem, 0, &p.bufs, p.table)?;
    ring.kick(mem)?;
    Ok(())
}

/// The sockets of `n` devices at `path`: `path0` .. `path{n-1}` when they all exist (a
/// backend started with one listening socket per device, `--socket-count`), else `path`
/// itself `n` times (a backend that serves concurrent connections on one socket).
pub fn sockets(path: &Path, n: usize) -> Vec<PathBuf> {
    let numbered: Vec<PathBuf> = (0..n)
        .map(|i| {
            let mut p = path.as_os_str().to_owned();
            p.push(i.to_string());
            PathBuf::from(p)
        })
        .collect();
    if numbered.iter().all(|p| p.exists()) {
        numbered
    } else {
        vec![path.to_path_buf(); n]
    }
}

/// Opens a device on each of `sockets` with `open`, each with the request `probe`
/// makes, and measures the backend `backend_pid` (found through the first socket when
/// not given).
pub fn run(
    sockets: &[PathBuf],
    backend_pid: Option<i32>,
    runtime: Duration,
    progress: bool,
    json: bool,
    open: impl Fn(&Path) -> Result<Device>,
    probe: impl Fn(&mut Device) -> Result<Probe>,
) -> Result<()> {
    let n = sockets.len();
    let Some(first) = sockets.first() else {
        bail!("no device to open");
    };
    raise_fd_limit();
    let pid = match backend_pid {
        Some(p) => p,
        None => {
            // A bare connection tells whose socket it is; the backend is sampled once
            // it is gone again.
            let p = peer_pid(first)?;
            std::thread::sleep(Duration::from_millis(300));
            p
        }
    };
    let before = sample(pid)?;
    let mut devs = Vec::with_capacity(n);
    let mut probes = Vec::with_capacity(n);
    let warm = Duration::from_secs(5);
    for (i, socket) in sockets.iter().enumerate() {
        let watch = Watchdog::arm(
            format!(
                "device {i} ({}): no answer within {SETUP_TIMEOUT:?}; a backend that serves one \
                 connection per socket needs one socket per device ({}0, {}1, ...)",
                socket.display(),
                first.display(),
                first.display()
            ),
            SETUP_TIMEOUT,
        );
        let mut d = open(socket).context(format_args!("device {i}"))?;
        let p = d.backend_pid()?;
        if p != pid {
            bail!("device {i} is served by pid {p}, not {pid}: the backend does not serve all devices in one process");
        }
        let pr = probe(&mut d)?;
        // One request each, so every device's worker is up before the backend is
        // sampled.
        submit(&mut d, &pr)?;
        let deadline = Instant::now() + warm;
        let mut done = false;
        while !done {
            let mem = d.mem.table();
            done = d.rings[pr.ring].reap(mem, Instant::now(), |_| Ok(()))? > 0;
            if !done {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    bail!("device {i}: no completion within {warm:?}");
                }
                wait_calls(
                    [d.rings[pr.ring].call_fd()],
                    left.min(Duration::from_millis(100)),
                )?;
            }
        }
        if let Some(st) = pr.status {
            crate::blk::probe_status(d.mem.table(), st)?;
        }
        drop(watch);
        devs.push(d);
        probes.push(pr);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = sample(pid)?;

    let streams = vec![Stream::new("kick-call", Units::Requests, true)];
    let mut meter = Meter::new(format!("scale x{n}"), streams, runtime, progress);
    for (d, p) in devs.iter_mut().zip(&probes) {
        submit(d, p)?;
    }
    loop {
        let now = Instant::now();
        if !meter.running(now) {
            break;
        }
        let mut reaped = 0;
        for (d, p) in devs.iter_mut().zip(&probes) {
            let mem = d.mem.table();
            let mut got = false;
            let bytes = p.bufs.iter().map(|b| u64::from(b.1)).sum::<u64>();
            d.rings[p.ring].reap(mem, now, |c| {
                meter.streams[0].complete(bytes, c.latency_ns);
                got = true;
                Ok(())
            })?;
            if got {
                if let Some(st) = p.status {
                    crate::blk::probe_status(mem, st)?;
                }
                reaped += 1;
                submit(d, p)?;
            }
        }
        if reaped == 0 {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            let mut any = false;
            for (d, p) in devs.iter().zip(&probes) {
                any |= d.rings[p.ring].has_used(d.mem.table())?;
            }
            if !any {
                wait_calls(
                    devs.iter()
                        .zip(&probes)
                        .map(|(d, p)| d.rings[p.ring].call_fd()),
                    meter.sleep_budget(now),
                )?;
                meter.waits += 1;
            }
        }
    }
    let secs = meter.elapsed();
    let device_description = devs.first().map_or_else(Json::obj, Device::describe);
    let end = sample(pid)?;
    for d in &mut devs {
        d.stop();
    }
    // Every frontend leaves; the backend should shrink back to its idle size.
    drop(devs);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut gone = sample(pid)?;
    while gone.threads > before.threads && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        gone = sample(pid)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let gone = sample(pid)?;

    let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
    let mut backend = Json::obj();
    backend
        .set("pid", pid)
        .set("rss_kib_before", before.rss_kib)
        .set("rss_kib_with_devices", after.rss_kib)
        .set("rss_kib_after_run", end.rss_kib)
        .set("rss_kib_per_device", per(after.rss_kib, before.rss_kib))
        .set(
            "rss_kib_per_device_after_run",
            per(end.rss_kib, before.rss_kib),
        )
        .set(
            "rss_anon_kib_per_device",
            per(after.rss_anon_kib, before.rss_anon_kib),
        )
        .set("rss_kib_after_disconnect", gone.rss_kib)
        .set(
            "rss_after_disconnect_vs_idle",
            gone.rss_kib as f64 / before.rss_kib.max(1) as f64,
        )
        .set("rss_kib_idle_per_device", before.rss_kib as f64 / n as f64)
        .set("rss_anon_kib_before", before.rss_anon_kib)
        .set("rss_anon_kib_after_disconnect", gone.rss_anon_kib)
        .set("threads_before", before.threads)
        .set("threads_after_disconnect", gone.threads)
        .set("threads_with_devices", after.threads)
        .set("threads_per_device", per(after.threads, before.threads));
    let device = device_description;
    let s = &meter.streams[0];
    if json {
        let mut j = Json::obj();
        j.set("workload", "scale")
            .set("devices", n)
            .set("runtime_s", secs)
            .set("device", device)
            .set("backend", backend)
            .set("results", stream_json(s, secs));
        println!("{j}");
    } else {
        println!(
            "scale: {n} devices, backend pid {pid}: RSS idle {} KiB ({:.1} KiB/device), connected {} KiB ({:.0} KiB/device, {:.0} KiB/device after the run), after disconnect {} KiB ({:.2}x idle; anonymous {} -> {} KiB, {:.2}x); threads idle {}, connected {} ({:.2}/device), after disconnect {}; {} over {:.1} s ({})",
            before.rss_kib,
            before.rss_kib as f64 / n as f64,
            after.rss_kib,
            per(after.rss_kib, before.rss_kib),
            per(end.rss_kib, before.rss_kib),
            gone.rss_kib,
            gone.rss_kib as f64 / before.rss_kib.max(1) as f64,
            before.rss_anon_kib,
            gone.rss_anon_kib,
            gone.rss_anon_kib as f64 / before.rss_anon_kib.max(1) as f64,
            before.threads,
            after.threads,
            per(after.threads, before.threads),
            gone.threads,
            stream_line(s, secs),
            secs,
            flat(&device)
        );
    }
    Ok(())
}
