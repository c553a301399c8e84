//! The hostile-frontend suite: every class of bad input in the reference's list
//! (`/work/shared/vhost-user-reference.md`, "Bad inputs seen in real vhost-user
//! implementations"), sent over real sockets to `rng_backend`, `net_backend --backend
//! null` and `blk_backend`, and to a process serving several devices at once.
//!
//! Each case runs on a fresh connection. After it, the backend must still serve a fresh
//! normal connection with real traffic, and hold exactly the fds, threads and mappings it
//! held before (`/proc/<pid>/{fd,task,maps}`). Against the multi-device process a
//! healthy session on another device carries traffic across the case.
//!
//! The runner is its own (`harness = false`): cases share one backend process per
//! device kind and run one at a time, so that resource snapshots are meaningful.
//! `cargo test --test hostile -- WORD` runs the cases whose name contains WORD;
//! `-- --list` prints every case with its class. Set `VHU_HOSTILE_VERBOSE=1` to see the
//! backends' logs.

#[path = "../support/backend.rs"]
mod backend;
#[path = "../support/hostile.rs"]
mod hostile;

/// A table entry for case function `$name` (used by the case files below).
macro_rules! case {
    ($name:ident, $class:expr, $kinds:expr) => {
        Case {
            name: stringify!($name),
            class: $class,
            kinds: $kinds,
            run: $name,
        }
    };
}

mod accept;
mod disconnect;
mod host;
mod memory_faults;
mod messages;
mod packed;
mod panics;
mod rings;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostile::{run_case, Case, Healthy, Kind, Proc, Target, CASE_LIMIT};

/// Watches the case in progress; a case that hangs ends the suite with its name.
struct Watchdog {
    current: Arc<Mutex<(String, Instant)>>,
    pids: Arc<Mutex<Vec<i32>>>,
}

impl Watchdog {
    fn start() -> Watchdog {
        let current = Arc::new(Mutex::new((String::from("startup"), Instant::now())));
        let pids = Arc::new(Mutex::new(Vec::<i32>::new()));
        let (c, p) = (current.clone(), pids.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let (name, since) = c.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if since.elapsed() > CASE_LIMIT {
                eprintln!(
                    "case {name} hung for more than {CASE_LIMIT:?}: the backend stopped answering"
                );
                for &pid in p.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::process::exit(2);
            }
        });
        Watchdog { current, pids }
    }

    fn enter(&self, name: &str) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = (name.into(), Instant::now());
    }

    fn track(&self, pid: i32) {
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid);
    }
}

/// Every case of the suite, in the order they run.
fn table() -> Vec<&'static Case> {
    messages::CASES
        .iter()
        .chain(rings::CASES)
        .chain(packed::CASES)
        .chain(memory_faults::CASES)
        .chain(disconnect::CASES)
        .chain(accept::CASES)
        .collect()
}

/// The example programs attacked, one process per device kind (and a net backend whose
/// worker polls its rings, which takes the other path through the worker loop). Adding a
/// device is one entry here (and its traffic in `Healthy::pump`). Each entry: kind, label,
/// program, arguments.
fn programs(image_dir: &Path) -> Vec<(Kind, &'static str, &'static str, Vec<String>)> {
    let image = image_dir.join("disk.img");
    vec![
        (Kind::Rng, "rng_backend", "rng_backend", vec![]),
        (
            Kind::Net,
            "net_backend",
            "net_backend",
            vec!["--backend".into(), "null".into()],
        ),
        (
            Kind::Net,
            "net_backend-polling",
            "net_backend",
            vec![
                "--backend".into(),
                "null".into(),
                "--busy-poll-us".into(),
                "200".into(),
            ],
        ),
        (
            Kind::Blk,
            "blk_backend",
            "blk_backend",
            vec!["--image".into(), image.to_string_lossy().into_owned()],
        ),
    ]
}

fn example_exists(name: &str) -> bool {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{name}.rs"))
        .exists()
}

fn main() {
    if let Some(dir) = std::env::var_os(host::HOST_ENV) {
        host::run(PathBuf::from(dir));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    if args.iter().any(|a| a == "--list") {
        for c in table() {
            println!("{}: {}", c.name, c.class);
        }
        for (name, class) in panics::NAMES {
            println!("{name}: {class}");
        }
        return;
    }
    let watchdog = Watchdog::start();
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut ran = 0usize;

    // Silence the default panic output of expected failures: each is reported once.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::env::var_os("VHU_HOSTILE_VERBOSE").is_some() {
            default_hook(info);
        }
    }));
    let mut record = |name: String, result: std::thread::Result<()>| {
        ran += 1;
        match result {
            Ok(()) => println!("case {name} ... ok"),
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!("case {name} ... FAILED\n    {why}");
                failures.push(name);
            }
        }
    };

    // The example programs.
    let image_dir = backend::TempDir::new("hostile-img");
    std::fs::write(image_dir.path().join("disk.img"), vec![0u8; 1 << 20]).expect("image");
    let ci = std::env::var_os("CI").is_some();
    for (kind, label, program, args) in programs(image_dir.path()) {
        let cases: Vec<&Case> = table()
            .into_iter()
            .filter(|c| c.kinds.contains(&kind))
            .filter(|c| selected(&format!("{label}::{}", c.name)))
            .collect();
        if cases.is_empty() {
            continue;
        }
        if !example_exists(program) {
            let msg =
                format!("{program}: examples/{program}.rs does not exist; its cases were not run");
            if ci {
                record(program.to_string(), Err(Box::new(msg)));
            } else {
                println!("SKIPPED {msg}");
            }
            continue;
        }
        watchdog.enter(&format!("{label} startup"));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (mut proc, socket) = Proc::example(program, &argv);
        watchdog.track(proc.pid());
        // One normal connection first: lazily created resources exist before the
        // first case, and its teardown is awaited.
        hostile::exercise(kind, &socket);
        proc.settle();
        let proc = Mutex::new(proc);
        let target = Target {
            label: label.to_string(),
            kind,
            socket,
            proc: &proc,
            sibling: None,
        };
        for case in cases {
            let name = format!("{}::{}", target.label, case.name);
            watchdog.enter(&name);
            let r = catch_unwind(AssertUnwindSafe(|| run_case(&target, case)));
            record(name, r);
        }
    }

    // The multi-device process: a hostile case on one device while another device of
    // the same process carries traffic; a device that panics.
    let host_cases: Vec<(Kind, &Case)> = [Kind::Rng, Kind::Net]
        .into_iter()
        .flat_map(|k| table().into_iter().map(move |c| (k, c)))
        .filter(|(k, c)| c.kinds.contains(k))
        .filter(|(k, c)| selected(&format!("host-{}::{}", k.device_name(), c.name)))
        .collect();
    let panic_selected = panics::NAMES.iter().any(|(n, _)| selected(n));
    if !host_cases.is_empty() || panic_selected {
        watchdog.enter("host startup");
        let mut host = host::start();
        watchdog.track(host.proc.pid());
        let (rng_socket, net_socket) = (host.socket(Kind::Rng), host.socket(Kind::Net));
        hostile::exercise(Kind::Rng, &rng_socket);
        hostile::exercise(Kind::Net, &net_socket);
        host.proc.settle();
        let host_dir = host.dir.clone();
        let proc = Mutex::new(host.proc);
        let open_sibling = |kind: Kind, socket: &std::path::Path| {
            let mut h = Healthy::open(kind, socket);
            h.pump();
            Mutex::new(h)
        };
        // A listener serves one frontend at a time: the device under attack has no
        // other connection, its sibling in the process has the healthy one.
        for (kind, label, sibling_kind, sibling_socket) in [
            (Kind::Rng, "host-rng", Kind::Net, &net_socket),
            (Kind::Net, "host-net", Kind::Rng, &rng_socket),
        ] {
            let cases: Vec<&Case> = host_cases
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, c)| *c)
                .collect();
            if cases.is_empty() {
                continue;
            }
            let sibling = open_sibling(sibling_kind, sibling_socket);
            proc.lock().unwrap_or_else(|e| e.into_inner()).settle();
            let target = Target {
                label: label.into(),
                kind,
                socket: host_dir.join(format!("{}.sock", kind.device_name())),
                proc: &proc,
                sibling: Some(&sibling),
            };
            for case in cases {
                let name = format!("{label}::{}", case.name);
                watchdog.enter(&name);
                let r = catch_unwind(AssertUnwindSafe(|| run_case(&target, case)));
                record(name, r);
            }
        }
        type Runner = fn(&Mutex<Proc>, &Path, &Mutex<Healthy>, &Mutex<Healthy>);
        let runners: [Runner; 3] = [panics::run, panics::run_fragile, panics::run_stuck];
        for ((name, _), run) in panics::NAMES.iter().zip(runners) {
            if !selected(name) {
                continue;
            }
            watchdog.enter(name);
            let rng_sibling = open_sibling(Kind::Rng, &rng_socket);
            let net_sibling = open_sibling(Kind::Net, &net_socket);
            proc.lock().unwrap_or_else(|e| e.into_inner()).settle();
            let r = catch_unwind(AssertUnwindSafe(|| {
                run(&proc, &host_dir, &rng_sibling, &net_sibling)
            }));
            record(name.to_string(), r);
        }
    }

    println!(
        "\nhostile: {} case(s) run, {} failed, in {:.1?}",
        ran,
        failures.len(),
        started.elapsed()
    );
    if !failures.is_empty() {
        for f in &failures {
            println!("  failed: {f}");
        }
        std::process::exit(1);
    }
}
