//! `docs/writing-a-device.md` shows its complete device and its test as files of this
//! workspace (`examples/echo_backend.rs`, `tests/echo_device.rs`), which build and run
//! with the suite: the guide must show them as they are.

/// The `rust` code blocks of a markdown text.
fn rust_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        match &mut current {
            None if line.trim_end() == "```rust" => current = Some(String::new()),
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn the_guide_shows_the_example_device_and_its_test_as_they_are() {
    let guide = include_str!("../docs/writing-a-device.md");
    let blocks = rust_blocks(guide);
    for (file, text) in [
        (
            "examples/echo_backend.rs",
            include_str!("../examples/echo_backend.rs"),
        ),
        ("tests/echo_device.rs", include_str!("echo_device.rs")),
    ] {
        assert!(
            blocks.iter().any(|b| b == text),
            "docs/writing-a-device.md has no code block equal to {file}: copy the file into the guide"
        );
    }
}

#[test]
fn the_example_device_is_under_100_lines() {
    let lines = include_str!("../examples/echo_backend.rs").lines().count();
    assert!(lines < 100, "examples/echo_backend.rs has {lines} lines");
}
