#![no_main]

#[path = "../targets/state_stream.rs"]
mod state_stream;

libfuzzer_sys::fuzz_target!(|data: &[u8]| state_stream::run(data));
