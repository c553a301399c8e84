#![no_main]

#[path = "../targets/chain_checks.rs"]
mod chain_checks;

#[path = "../targets/inflight_area.rs"]
mod inflight_area;

libfuzzer_sys::fuzz_target!(|data: &[u8]| inflight_area::run(data));
