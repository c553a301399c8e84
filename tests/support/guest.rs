//! Real Linux guests for the integration tests.
//!
//! Boots QEMU (TCG by default) with a small Linux guest whose virtio devices
//! are served by vhost-user backends listening on unix sockets, runs the guest
//! tests named in [`GuestConfig::tests`] (implemented in `tests/guest/init`) and
//! returns what the guest reported on its serial console.
//!
//! Use it from an integration test by including this file as a module:
//!
//! ```ignore
//! #[path = "support/guest.rs"]
//! mod guest;
//!
//! #[test]
//! fn rng_in_a_real_guest() {
//!     let Some(image) = guest::require_guest() else { return };
//!     // ... start the backend listening on `sock` ...
//!     let run = image.run(&guest::GuestConfig {
//!         rng_socket: Some(sock),
//!         tests: vec!["info".into(), "rng".into()],
//!         ..Default::default()
//!     });
//!     run.assert_pass();
//! }
//! ```
//!
//! With [`GuestConfig::reboot`] the guest runs its tests, resets itself with
//! `reboot -f` and runs them again in a second boot within the same QEMU
//! process; [`GuestConfig::console`] hands the console's lines to the test as
//! they arrive, for host-side peers that have to wait for the guest (the
//! `VHU-READY` lines).
//!
//! The module uses only `std`. The guest image (kernel + initramfs) is built
//! by `tests/guest/build-guest.sh` on first use in a process; see that script
//! for the host packages it installs and where it puts its output.
//!
//! Environment:
//! * `VHU_GUEST_DIR`: guest image directory (default `<target dir>/guest`)
//! * `VHU_GUEST_SCRIPT`: path of build-guest.sh (default: found by walking up
//!   from the crate's manifest directory)
//! * `VHU_QEMU`: the qemu-system-x86_64 binary (default: searched on `PATH`)
//! * `VHU_ACCEL`: `tcg` (default) or `kvm`
//! * `VHU_NET_OPTS`: extra virtio-net-pci properties (default `vectors=0`:
//!   QEMU 7.2 under TCG crashes with vhost-user-net and MSI-X, INTx works)
//! * `VHU_GUEST_KEEP=1`: keep the serial log and QEMU stderr files of each run
//! * `CI` (any value but empty, `0` or `false`) or `VHU_REQUIRE_GUEST=1`:
//!   [`require_guest`] (and [`skip_or_fail`], for other missing host
//!   facilities) panics instead of skipping when no guest can be booted
//! * `VHU_SKIP_APT=1`: passed on to build-guest.sh (never apt-get install)

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// Lock file serialising guest runs across threads and test processes: QEMU
/// under TCG needs a whole core, and parallel guests make timings meaningless.
pub const GUEST_LOCK_PATH: &str = "/tmp/vhost-user-sync-guest.lock";

/// MAC address of the guest's virtio-net device.
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// How long QEMU may take to exit after the guest printed `VHU-FINAL`.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// What to boot and which guest tests to run.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// vhost-user-rng-pci served by the backend listening here.
    pub rng_socket: Option<PathBuf>,
    /// virtio-net-pci (vhost-user netdev, one queue pair) served from here.
    pub net_socket: Option<PathBuf>,
    /// vhost-user-blk-pci (one queue) served from here.
    pub blk_socket: Option<PathBuf>,
    /// The blk chardev reconnects (`reconnect=1`): QEMU waits for a backend that went
    /// away to come back on the same socket, and carries on.
    pub blk_reconnect: bool,
    /// Guest tests, run in order (`info`, `rng`, `reload_rng`, `ping`,
    /// `tcp_tx`, `tcp_rx`, `reload_net`, `blk`; see `tests/guest/init`).
    /// Empty means `info`.
    pub tests: Vec<String>,
    /// Appended to the kernel command line, e.g. `vhu.ip=10.77.0.2/24`.
    pub extra_cmdline: String,
    /// QEMU is killed when it has not exited after this long.
    pub timeout: Duration,
    /// Guest RAM (memfd backed and shared, as vhost-user requires).
    pub mem_mib: u32,
    /// Appended to the QEMU command line as they are.
    pub extra_qemu_args: Vec<String>,
    /// Packed virtqueues (`packed=on`) on every vhost-user device.
    pub packed: bool,
    /// Run the tests, reset the guest from inside (`reboot -f`) and run them
    /// again in the same QEMU process (`vhu.reboot=1`, see `tests/guest/init`);
    /// QEMU then runs without `-no-reboot`.
    pub reboot: bool,
    /// Receives every console line (without its line end) while QEMU runs, so
    /// that the host side of a test can follow the guest. The sender is never
    /// cloned: once the run has returned and the configuration is dropped, the
    /// receiver sees the channel disconnected.
    pub console: Option<mpsc::Sender<String>>,
    /// Run without taking the guest lock, because the caller holds it ([`GuestLock`]).
    /// A test whose host side waits on the guest with deadlines takes the lock before it
    /// starts the clock, so that time spent queued behind other guests is not counted;
    /// a migration's destination runs under the lock its source's test took.
    pub lock_held: bool,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            rng_socket: None,
            net_socket: None,
            blk_socket: None,
            blk_reconnect: false,
            tests: vec!["info".to_string()],
            extra_cmdline: String::new(),
            timeout: Duration::from_secs(120),
            mem_mib: 256,
            extra_qemu_args: Vec::new(),
            packed: false,
            reboot: false,
            console: None,
            lock_held: false,
        }
    }
}

impl GuestConfig {
    /// Default configuration running the given guest tests.
    pub fn with_tests(tests: &[&str]) -> Self {
        GuestConfig {
            tests: tests.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }
    }
}

/// One `VHU-RESULT <test> PASS|FAIL key=value...` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestResult {
    pub test: String,
    pub pass: bool,
    /// The `key=value` words; a word without `=` is stored with an empty value.
    pub fields: BTreeMap<String, String>,
}

impl GuestResult {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A numeric field (decimal, or hex with a `0x` prefix).
    pub fn field_u64(&self, key: &str) -> Option<u64> {
        let v = self.field(key)?;
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }
}

/// Everything one guest run produced (two boots with [`GuestConfig::reboot`]).
#[derive(Clone, Debug)]
pub struct GuestRun {
    /// The tests that were requested, in order.
    pub tests: Vec<String>,
    /// The run was in reboot mode: every result carries `boot=1` or `boot=2`.
    pub reboot: bool,
    pub results: Vec<GuestResult>,
    /// The guest printed `VHU-FINAL PASS`.
    pub final_pass: bool,
    /// The whole serial console (kernel messages and the init's output).
    pub console: String,
    /// QEMU's stderr and stdout.
    pub qemu_stderr: String,
    /// QEMU did not exit in time and was killed.
    pub timed_out: bool,
    /// QEMU's exit status (`None` if it could not be collected).
    pub exit_status: Option<ExitStatus>,
    /// From QEMU's start until it exited or was killed.
    pub elapsed: Duration,
    /// The QEMU command line, for reproducing a failure by hand.
    pub command_line: String,
}

impl GuestRun {
    /// The last result reported for `test`.
    pub fn result(&self, test: &str) -> Option<&GuestResult> {
        self.results.iter().rev().find(|r| r.test == test)
    }

    /// The last result reported for `test` in boot `boot` (1 or 2) of a reboot run.
    pub fn result_in_boot(&self, test: &str, boot: u32) -> Option<&GuestResult> {
        let boot = boot.to_string();
        self.results
            .iter()
            .rev()
            .find(|r| r.test == test && r.field("boot") == Some(boot.as_str()))
    }

    /// `test` reported PASS.
    pub fn passed(&self, test: &str) -> bool {
        self.result(test).is_some_and(|r| r.pass)
    }

    /// The result of `test`, which must have passed; panics with the report
    /// otherwise.
    pub fn expect_pass(&self, test: &str) -> &GuestResult {
        match self.result(test) {
            Some(r) if r.pass => r,
            Some(_) => panic!("guest test {test} failed\n{}", self.report()),
            None => panic!("guest test {test} reported no result\n{}", self.report()),
        }
    }

    /// Panics with the report unless QEMU exited by itself, the guest printed
    /// `VHU-FINAL PASS`, and every requested test reported PASS (in both boots
    /// of a reboot run).
    pub fn assert_pass(&self) {
        let mut problems = Vec::new();
        if self.timed_out {
            problems.push("QEMU timed out".to_string());
        }
        if !self.final_pass {
            problems.push("no VHU-FINAL PASS".to_string());
        }
        for t in &self.tests {
            if self.reboot {
                for boot in 1..=2 {
                    match self.result_in_boot(t, boot) {
                        Some(r) if r.pass => {}
                        Some(_) => problems.push(format!("{t} FAIL in boot {boot}")),
                        None => problems.push(format!("{t}: no result in boot {boot}")),
                    }
                }
                continue;
            }
            match self.result(t) {
                Some(r) if r.pass => {}
                Some(_) => problems.push(format!("{t} FAIL")),
                None => problems.push(format!("{t}: no result")),
            }
        }
        if !problems.is_empty() {
            panic!(
                "guest run failed: {}\n{}",
                problems.join(", "),
                self.report()
            );
        }
    }

    /// Human-readable summary: verdicts, QEMU status, stderr and the end of
    /// the console.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "--- guest run: final_pass={} timed_out={} exit={:?} elapsed={:.2}s",
            self.final_pass,
            self.timed_out,
            self.exit_status.and_then(|st| st.code()),
            self.elapsed.as_secs_f64()
        );
        for r in &self.results {
            let verdict = if r.pass { "PASS" } else { "FAIL" };
            let _ = writeln!(s, "  {} {} {:?}", r.test, verdict, r.fields);
        }
        let _ = writeln!(s, "--- qemu command line:\n{}", self.command_line);
        if !self.qemu_stderr.trim().is_empty() {
            let _ = writeln!(s, "--- qemu stderr:\n{}", self.qemu_stderr.trim_end());
        }
        let lines: Vec<&str> = self.console.lines().collect();
        let from = lines.len().saturating_sub(60);
        let _ = writeln!(s, "--- console (last {} lines):", lines.len() - from);
        for l in &lines[from..] {
            let _ = writeln!(s, "{}", l.trim_end_matches('\r'));
        }
        s
    }
}

/// Parses the guest's console: every `VHU-RESULT` line, and the verdict of
/// the last `VHU-FINAL` line (`None` if there is none). A marker is also found
/// after other text on the same line, in case kernel output got in front of it.
pub fn parse_console(console: &str) -> (Vec<GuestResult>, Option<bool>) {
    let mut results = Vec::new();
    let mut final_verdict = None;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(pos) = line.find("VHU-RESULT ") {
            let mut words = line[pos + "VHU-RESULT ".len()..].split_whitespace();
            let (Some(test), Some(verdict)) = (words.next(), words.next()) else {
                continue;
            };
            let fields = words
                .map(|w| match w.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (w.to_string(), String::new()),
                })
                .collect();
            results.push(GuestResult {
                test: test.to_string(),
                pass: verdict == "PASS",
                fields,
            });
        } else if let Some(pos) = line.find("VHU-FINAL ") {
            let verdict = line[pos + "VHU-FINAL ".len()..].split_whitespace().next();
            final_verdict = Some(verdict == Some("PASS"));
        }
    }
    (results, final_verdict)
}

/// A built guest image plus the QEMU binary to boot it with.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub qemu: PathBuf,
    /// Searched for firmware and option ROMs before QEMU's own folders (`-L`), for a
    /// QEMU that is not the machine's installed one.
    pub qemu_data: Option<PathBuf>,
}

static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
static MIGRATION_QEMU: OnceLock<Result<(PathBuf, Option<PathBuf>), String>> = OnceLock::new();

/// Builds the guest image (once per process) and finds QEMU. The error says
/// why a guest cannot be booted on this machine.
pub fn guest_available() -> Result<GuestImage, String> {
    IMAGE.get_or_init(prepare_image).clone()
}

/// The guest image, or `None` after printing a SKIP line when it cannot be
/// had. In CI (see the module documentation) a missing guest is a failure,
/// never a silent skip: this panics instead.
pub fn require_guest() -> Option<GuestImage> {
    match guest_available() {
        Ok(image) => Some(image),
        Err(why) => {
            skip_or_fail(&format!("QEMU guest not available: {why}"));
            None
        }
    }
}

/// For a whole-stack test that cannot run here because of `why`: panics where
/// guest tests are required (see [`guest_required`]), prints a SKIP line
/// otherwise. The caller returns after it.
pub fn skip_or_fail(why: &str) {
    if guest_required() {
        panic!("this test must run here (CI or VHU_REQUIRE_GUEST=1) but cannot: {why}");
    }
    // Written to the real stderr, past the test harness's output capture, so
    // that a skip is always visible.
    let _ = writeln!(std::io::stderr(), "SKIP: {why}");
}

/// Whole-stack tests must run, not skip: `CI` is set (to anything but empty,
/// `0` or `false`) or `VHU_REQUIRE_GUEST=1`.
pub fn guest_required() -> bool {
    let ci = std::env::var("CI").unwrap_or_default();
    let ci = !ci.is_empty() && ci != "0" && !ci.eq_ignore_ascii_case("false");
    ci || std::env::var("VHU_REQUIRE_GUEST").is_ok_and(|v| v == "1")
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn find_build_script() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VHU_GUEST_SCRIPT") {
        return Ok(PathBuf::from(p));
    }
    let start = manifest_dir();
    let mut dir: Option<&Path> = Some(&start);
    while let Some(d) = dir {
        let candidate = d.join("tests/guest/build-guest.sh");
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err(format!(
        "tests/guest/build-guest.sh not found above {}",
        start.display()
    ))
}

fn default_guest_dir(script: &Path) -> PathBuf {
    if let Some(d) = std::env::var_os("VHU_GUEST_DIR") {
        return PathBuf::from(d);
    }
    // Cargo sets CARGO_TARGET_TMPDIR (<target dir>/tmp) for integration
    // tests, which honours CARGO_TARGET_DIR and .cargo/config alike.
    if let Some(tmp) = option_env!("CARGO_TARGET_TMPDIR") {
        if let Some(target) = Path::new(tmp).parent() {
            return target.join("guest");
        }
    }
    // <repo>/tests/guest/build-guest.sh -> <repo>/target/guest
    let repo = script.ancestors().nth(3).unwrap_or(Path::new("."));
    repo.join("target/guest")
}

fn find_qemu() -> Result<PathBuf, String> {
    if let Some(q) = std::env::var_os("VHU_QEMU") {
        return Ok(PathBuf::from(q));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or_else(|| "qemu-system-x86_64 not found on PATH".to_string())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs one of the guest scripts with `VHU_GUEST_DIR=dir`; returns the value of the last
/// line of its output that starts with `key=`, if any, or why it failed.
fn run_guest_script(script: &Path, dir: &Path, key: &str) -> Result<Option<PathBuf>, String> {
    let out = Command::new("bash")
        .arg(script)
        .env("VHU_GUEST_DIR", dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            tail(&format!("{stdout}{stderr}"), 30)
        ));
    }
    let prefix = format!("{key}=");
    Ok(stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(PathBuf::from))
}

fn prepare_image() -> Result<GuestImage, String> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err("the test guest needs an x86_64 Linux host".to_string());
    }
    let script = find_build_script()?;
    let dir = default_guest_dir(&script);
    let started = Instant::now();
    let dir = run_guest_script(&script, &dir, "VHU_GUEST_DIR")?.unwrap_or(dir);
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initramfs.cpio.gz");
    for f in [&kernel, &initrd] {
        if !f.is_file() {
            return Err(format!("{} missing after build-guest.sh", f.display()));
        }
    }
    let qemu = find_qemu()?;
    let version = qemu_first_line(&qemu)?;
    eprintln!(
        "guest image ready in {:.1}s: {} ({version})",
        started.elapsed().as_secs_f64(),
        dir.display(),
    );
    Ok(GuestImage {
        dir,
        kernel,
        initrd,
        qemu,
        qemu_data: None,
    })
}

fn qemu_first_line(qemu: &Path) -> Result<String, String> {
    let out = Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    if !out.status.success() {
        return Err(format!("{} --version failed", qemu.display()));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("unknown QEMU version")
        .to_string())
}

/// The QEMU for live migrations: `VHU_MIGRATION_QEMU` if set, else the one
/// `tests/guest/fetch-migration-qemu.sh` unpacks next to the guest image (its
/// comment says why the machine's QEMU 7.2 cannot be used: its TCG loses guest writes
/// during a migration).
fn prepare_migration_qemu(image: &GuestImage) -> Result<(PathBuf, Option<PathBuf>), String> {
    if let Some(q) = std::env::var_os("VHU_MIGRATION_QEMU") {
        return Ok((PathBuf::from(q), None));
    }
    let script = find_build_script()?.with_file_name("fetch-migration-qemu.sh");
    let qemu = run_guest_script(&script, &image.dir, "VHU_MIGRATION_QEMU")?
        .ok_or_else(|| format!("{} named no QEMU", script.display()))?;
    // <folder>/root/usr/bin/qemu-system-x86_64 -> <folder>/root/usr/share/qemu
    let data = qemu
        .parent()
        .and_then(Path::parent)
        .map(|usr| usr.join("share/qemu"))
        .filter(|d| d.is_dir());
    Ok((qemu, data))
}

impl GuestImage {
    /// This image booted by the QEMU the live-migration tests use (see
    /// `tests/guest/fetch-migration-qemu.sh`), fetched once per process.
    pub fn with_migration_qemu(&self) -> Result<GuestImage, String> {
        let (qemu, qemu_data) = MIGRATION_QEMU
            .get_or_init(|| prepare_migration_qemu(self))
            .clone()?;
        eprintln!(
            "migration QEMU: {} ({})",
            qemu.display(),
            qemu_first_line(&qemu)?
        );
        Ok(GuestImage {
            qemu,
            qemu_data,
            ..self.clone()
        })
    }
}

fn utf8(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("path is not UTF-8: {}", path.display()))
}

/// A value inside a QEMU option list (`-chardev socket,path=...`) may not
/// contain a bare comma: it is written twice. (`-kernel`, `-initrd` and
/// `-serial file:` take their path as it is.)
fn qemu_escape(path: &Path) -> String {
    utf8(path).replace(',', ",,")
}

/// Kills QEMU if the run is abandoned (timeout or a panic).
struct QemuProcess(Option<Child>);

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The exclusive right to run QEMU guests, held until dropped (see [`GuestImage::run`]).
pub struct GuestLock {
    _file: File,
}

impl GuestLock {
    /// Waits until no other guest runs, in this process or another.
    pub fn take() -> GuestLock {
        GuestLock {
            _file: take_guest_lock(),
        }
    }
}

// File::lock() is newer than the workspace's rust-version; this file is
// only built by the test suite, with the current toolchain.
#[allow(clippy::incompatible_msrv)]
fn take_guest_lock() -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(GUEST_LOCK_PATH)
        .or_else(|_| File::open(GUEST_LOCK_PATH))
        .unwrap_or_else(|e| panic!("cannot open {GUEST_LOCK_PATH}: {e}"));
    file.lock()
        .unwrap_or_else(|e| panic!("cannot lock {GUEST_LOCK_PATH}: {e}"));
    file
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Follows the serial log while QEMU writes it: complete lines as they arrive.
struct ConsoleTail {
    file: Option<File>,
    pending: Vec<u8>,
}

impl ConsoleTail {
    fn new(path: &Path) -> Self {
        ConsoleTail {
            file: File::open(path).ok(),
            pending: Vec::new(),
        }
    }

    /// The lines completed since the last call, without their line ends.
    fn new_lines(&mut self) -> Vec<String> {
        if let Some(f) = &mut self.file {
            // reads on from where the last call stopped
            let _ = f.read_to_end(&mut self.pending);
        }
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let done: Vec<u8> = self.pending.drain(..=end).collect();
        String::from_utf8_lossy(&done)
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()
    }

    /// The text after the last line end so far.
    fn partial_line(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.pending)
    }

    /// The text after the last line end, if any, as a last line.
    fn take_partial_line(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        let rest = String::from_utf8_lossy(&rest);
        let rest = rest.trim_end_matches('\r');
        (!rest.is_empty()).then(|| rest.to_string())
    }
}

impl GuestImage {
    /// The QEMU arguments for `cfg`, with the console going to `serial_log`.
    pub fn qemu_args(&self, cfg: &GuestConfig, serial_log: &Path) -> Vec<String> {
        let tests = if cfg.tests.is_empty() {
            "info".to_string()
        } else {
            cfg.tests.join(",")
        };
        let mut cmdline = format!("console=ttyS0 panic=-1 quiet loglevel=4 vhu.tests={tests}");
        if cfg.reboot {
            cmdline.push_str(" vhu.reboot=1");
        }
        if !cfg.extra_cmdline.trim().is_empty() {
            cmdline.push(' ');
            cmdline.push_str(cfg.extra_cmdline.trim());
        }
        let accel = std::env::var("VHU_ACCEL").unwrap_or_else(|_| "tcg".to_string());
        let cpu = if accel == "kvm" { "host" } else { "max" };
        let mem = cfg.mem_mib;
        let mut args: Vec<String> = vec!["-nodefaults".into(), "-display".into(), "none".into()];
        if let Some(data) = &self.qemu_data {
            args.extend(["-L".into(), utf8(data).to_string()]);
        }
        if !cfg.reboot {
            // a reset (or a kernel panic, with panic=-1) ends QEMU
            args.push("-no-reboot".into());
        }
        args.extend([
            "-monitor".into(),
            "none".into(),
            "-accel".into(),
            accel.clone(),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            "1".into(),
            // vhost-user backends map guest RAM, so it must live in a
            // shareable file descriptor
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            "-M".into(),
            "q35,memory-backend=mem".into(),
            "-m".into(),
            format!("{mem}M"),
            "-kernel".into(),
            utf8(&self.kernel).to_string(),
            "-initrd".into(),
            utf8(&self.initrd).to_string(),
            "-append".into(),
            cmdline,
            "-serial".into(),
            format!("file:{}", utf8(serial_log)),
        ]);

        let packed = if cfg.packed { ",packed=on" } else { "" };
        if let Some(sock) = &cfg.rng_socket {
            args.extend([
                "-chardev".to_string(),
                format!("socket,id=vhu_rng,path={}", qemu_escape(sock)),
                "-device".to_string(),
                format!("vhost-user-rng-pci,chardev=vhu_rng{packed}"),
            ]);
        }
        if let Some(sock) = &cfg.net_socket {
            let opts = std::env::var("VHU_NET_OPTS").unwrap_or_else(|_| "vectors=0".to_string());
            let mut device = format!("virtio-net-pci,netdev=vhu_net0,mac={GUEST_MAC}{packed}");
            if !opts.is_empty() {
                device.push(',');
                device.push_str(&opts);
            }
            args.extend([
                "-chardev".to_string(),
                format!("socket,id=vhu_net,path={}", qemu_escape(sock)),
                "-netdev".to_string(),
                "vhost-user,id=vhu_net0,chardev=vhu_net,queues=1".to_string(),
                "-device".to_string(),
                device,
            ]);
        }
        if let Some(sock) = &cfg.blk_socket {
            args.extend([
                "-chardev".to_string(),
                format!(
                    "socket,id=vhu_blk,path={}{}",
                    qemu_escape(sock),
                    if cfg.blk_reconnect {
                        ",reconnect=1"
                    } else {
                        ""
                    }
                ),
                "-device".to_string(),
                format!("vhost-user-blk-pci,chardev=vhu_blk,num-queues=1{packed}"),
            ]);
        }
        args.extend(cfg.extra_qemu_args.iter().cloned());
        args
    }

    /// Boots the guest, waits until QEMU exits (or kills it after
    /// `cfg.timeout`) and parses the console. Runs are serialised across
    /// threads and processes by an exclusive lock on [`GUEST_LOCK_PATH`].
    /// Panics only when QEMU cannot be started at all; a failing or hanging
    /// guest is reported in the returned [`GuestRun`].
    pub fn run(&self, cfg: &GuestConfig) -> GuestRun {
        // flock() locks belong to the open file description, so a second
        // thread of this process opening the file waits just like another
        // process does.
        let _lock = (!cfg.lock_held).then(take_guest_lock);

        let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let work = std::env::temp_dir().join(format!("vhu-guest-{}-{n}", std::process::id()));
        fs::create_dir_all(&work)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", work.display()));
        let serial_log = work.join("serial.log");
        let stderr_log = work.join("qemu.stderr");
        File::create(&serial_log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", serial_log.display()));
        let stderr_file = File::create(&stderr_log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", stderr_log.display()));
        let stdout_file = stderr_file.try_clone().expect("dup stderr file");

        let args = self.qemu_args(cfg, &serial_log);
        let command_line = std::iter::once(self.qemu.display().to_string())
            .chain(args.iter().map(|a| {
                if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.clone()
                }
            }))
            .collect::<Vec<_>>()
            .join(" ");

        let started = Instant::now();
        let child = Command::new(&self.qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(stdout_file)
            .stderr(stderr_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.qemu.display()));
        let mut qemu = QemuProcess(Some(child));

        let deadline = started + cfg.timeout;
        let mut final_seen_at: Option<Instant> = None;
        let mut last_log_check = started;
        let mut timed_out = false;
        let mut tail = ConsoleTail::new(&serial_log);
        let exit_status = loop {
            let child = qemu.0.as_mut().expect("QEMU child");
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(_) => break None,
            }
            let now = Instant::now();
            if now.duration_since(last_log_check) >= Duration::from_millis(100) {
                last_log_check = now;
                for line in tail.new_lines() {
                    if line.contains("VHU-FINAL ") {
                        final_seen_at.get_or_insert(now);
                    }
                    if let Some(tx) = &cfg.console {
                        let _ = tx.send(line);
                    }
                }
                if tail.partial_line().contains("VHU-FINAL ") {
                    final_seen_at.get_or_insert(now);
                }
            }
            // After the verdict the guest powers off at once; a QEMU that
            // does not exit then is stuck (e.g. stopping a vhost device).
            let stuck = final_seen_at.is_some_and(|t| now.duration_since(t) > EXIT_GRACE);
            if now >= deadline || stuck {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // reaped already, or killed here if try_wait() failed
        drop(qemu);
        let elapsed = started.elapsed();
        if let Some(tx) = &cfg.console {
            for line in tail.new_lines().into_iter().chain(tail.take_partial_line()) {
                let _ = tx.send(line);
            }
        }

        let console =
            String::from_utf8_lossy(&fs::read(&serial_log).unwrap_or_default()).into_owned();
        let qemu_stderr =
            String::from_utf8_lossy(&fs::read(&stderr_log).unwrap_or_default()).into_owned();
        if std::env::var("VHU_GUEST_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("guest run logs kept in {}", work.display());
        } else {
            let _ = fs::remove_dir_all(&work);
        }

        let (results, final_verdict) = parse_console(&console);
        GuestRun {
            reboot: cfg.reboot,
            tests: if cfg.tests.is_empty() {
                vec!["info".to_string()]
            } else {
                cfg.tests.clone()
            },
            results,
            final_pass: final_verdict == Some(true),
            console,
            qemu_stderr,
            timed_out,
            exit_status,
            elapsed,
            command_line,
        }
    }
}

/// The md5 of `data` (as the guest's `md5sum` prints it).
pub fn md5(data: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
