#![no_main]

#[path = "../targets/chain_checks.rs"]
mod chain_checks;

#[path = "../targets/packed_walk.rs"]
mod packed_walk;

libfuzzer_sys::fuzz_target!(|data: &[u8]| packed_walk::run(data));
