#![no_main]

#[path = "../targets/session.rs"]
mod session;

libfuzzer_sys::fuzz_target!(|data: &[u8]| session::run(data));
