//! Self-test of the QEMU guest support (tests/support/guest.rs and
//! tests/guest/): boots the guest without any vhost-user device, so a failure
//! here points at the host tools, the guest image or tests/support/guest.rs,
//! never at a backend.

#[path = "support/guest.rs"]
mod guest;

use std::time::Duration;

#[test]
fn console_lines_are_parsed() {
    let console = "\
[    1.2] some kernel message\r
VHU-BOOT kernel=6.1 t=1.8\r
VHU-INFO virtio virtio0 device_id=0x0004\r
VHU-RESULT info PASS devices=1 virtio0.features=0x0000000130000000\r
[    2.0] noise VHU-RESULT rng FAIL bytes=100 flag\r
VHU-FINAL FAIL tests=2 fails=1 t=2.1\r
";
    let (results, verdict) = guest::parse_console(console);
    assert_eq!(verdict, Some(false));
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].test, "info");
    assert!(results[0].pass);
    assert_eq!(results[0].field("devices"), Some("1"));
    assert_eq!(
        results[0].field_u64("virtio0.features"),
        Some(0x1_3000_0000)
    );
    assert_eq!(results[1].test, "rng");
    assert!(!results[1].pass);
    assert_eq!(results[1].field_u64("bytes"), Some(100));
    assert_eq!(results[1].field("flag"), Some(""));

    assert_eq!(guest::parse_console("no markers at all\n").1, None);
    assert_eq!(
        guest::parse_console("VHU-FINAL PASS tests=1\n").1,
        Some(true)
    );
}

#[test]
fn guest_boots_without_devices() {
    let Some(image) = guest::require_guest() else {
        return;
    };
    let run = image.run(&guest::GuestConfig {
        tests: vec!["info".into()],
        timeout: Duration::from_secs(120),
        ..Default::default()
    });
    run.assert_pass();
    let info = run.expect_pass("info");
    assert_eq!(info.field("devices"), Some("0"), "{}", run.report());
    eprintln!(
        "guest booted and passed in {:.2}s",
        run.elapsed.as_secs_f64()
    );
}

/// The guest's rng tests against QEMU's built-in virtio-rng device: checks the
/// guest side of the rng and reload_rng tests independently of any backend.
#[test]
fn guest_rng_tests_pass_with_builtin_virtio_rng() {
    let Some(image) = guest::require_guest() else {
        return;
    };
    let run = image.run(&guest::GuestConfig {
        tests: vec!["info".into(), "rng".into(), "reload_rng".into()],
        extra_qemu_args: vec!["-device".into(), "virtio-rng-pci".into()],
        ..Default::default()
    });
    run.assert_pass();
    let rng = run.expect_pass("rng");
    assert_eq!(rng.field_u64("bytes"), Some(65536));
    let reload = run.expect_pass("reload_rng");
    assert_eq!(reload.field_u64("bytes"), Some(16384));
    assert_eq!(
        run.expect_pass("info").field("virtio0.driver"),
        Some("virtio_rng")
    );
}
