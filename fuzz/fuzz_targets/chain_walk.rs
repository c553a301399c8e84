#![no_main]

#[path = "../targets/chain_walk.rs"]
mod chain_walk;

libfuzzer_sys::fuzz_target!(|data: &[u8]| chain_walk::run(data));
