#![no_main]

#[path = "../targets/packed_walk.rs"]
mod packed_walk;

libfuzzer_sys::fuzz_target!(|data: &[u8]| packed_walk::run(data));
