#![no_main]

#[path = "../targets/net_hdr.rs"]
mod net_hdr;

libfuzzer_sys::fuzz_target!(|data: &[u8]| net_hdr::run(data));
