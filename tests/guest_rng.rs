//! `rng_backend` serving a real Linux guest: QEMU's vhost-user-rng-pci on the
//! backend's socket, the guest's virtio_rng driver reading from /dev/hwrng.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/guest.rs"]
mod guest;

use std::time::Duration;

use backend::BackendProcess;
use guest::{GuestConfig, GuestImage, GuestRun};
use vhost_user_sync::backend::TRANSPORT_FEATURES;
use vhost_user_sync::protocol::virtio;

const T: Duration = Duration::from_secs(30);

fn boot(image: &GuestImage, be: &BackendProcess, tests: &[&str], packed: bool) -> GuestRun {
    let run = image.run(&GuestConfig {
        rng_socket: Some(be.socket.clone()),
        packed,
        ..GuestConfig::with_tests(tests)
    });
    eprintln!("guest run took {:.2}s", run.elapsed.as_secs_f64());
    run.assert_pass();
    run
}

/// The rng test read all it asked for, and the data looked random to the guest.
fn check_rng(run: &GuestRun, test: &str, bytes: u64) {
    let r = run.expect_pass(test);
    assert_eq!(r.field_u64("bytes"), Some(bytes), "{}", run.report());
    assert!(
        r.field("rng").is_some_and(|v| v.starts_with("virtio_rng.")),
        "{}",
        run.report()
    );
    assert_eq!(r.field("halves_differ"), Some("1"), "{}", run.report());
}

#[test]
fn guest_reads_entropy_from_rng_backend() {
    reads_entropy(false);
}

#[test]
fn guest_reads_entropy_on_a_packed_ring() {
    reads_entropy(true);
}

fn reads_entropy(packed: bool) {
    let Some(image) = guest::require_guest() else {
        return;
    };
    let be = BackendProcess::start("rng_backend", &[]);
    let run = boot(&image, &be, &["info", "rng", "reload_rng"], packed);

    let info = run.expect_pass("info");
    assert_eq!(info.field("devices"), Some("1"), "{}", run.report());
    assert_eq!(info.field("virtio0.id"), Some("0x0004"), "{}", run.report());
    assert_eq!(
        info.field("virtio0.driver"),
        Some("virtio_rng"),
        "{}",
        run.report()
    );
    let features = info
        .field_u64("virtio0.features")
        .unwrap_or_else(|| panic!("no feature bits\n{}", run.report()));
    assert_ne!(features & virtio::VERSION_1, 0, "{features:#x}");
    assert_eq!(features & virtio::RING_PACKED != 0, packed, "{features:#x}");
    // Nothing beyond what the backend offers, less the vhost-user-only
    // PROTOCOL_FEATURES bit.
    let offered = TRANSPORT_FEATURES & !virtio::PROTOCOL_FEATURES;
    assert_eq!(features & !offered, 0, "{features:#x} beyond {offered:#x}");

    check_rng(&run, "rng", 65536);
    check_rng(&run, "reload_rng", 16384);
    assert_ne!(
        run.expect_pass("rng").field("md5"),
        run.expect_pass("reload_rng").field("md5")
    );

    be.wait_log("frontend connected", T);
    // QEMU has exited: the backend saw the frontend leave.
    be.wait_log("frontend disconnected", T);
}

#[test]
fn one_backend_serves_two_guests_in_a_row() {
    let Some(image) = guest::require_guest() else {
        return;
    };
    let mut be = BackendProcess::start("rng_backend", &[]);
    let mut digests = Vec::new();
    for boot_number in 1..=2 {
        let run = boot(&image, &be, &["rng"], false);
        check_rng(&run, "rng", 65536);
        digests.push(run.expect_pass("rng").field("md5").map(str::to_owned));
        be.wait_log("frontend connected", T);
        be.wait_log("frontend disconnected", T);
        assert!(
            be.child.try_wait().unwrap().is_none(),
            "backend exited after guest {boot_number}"
        );
    }
    assert_ne!(digests[0], digests[1]);
}
