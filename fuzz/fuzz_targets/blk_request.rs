#![no_main]

#[path = "../targets/blk_request.rs"]
mod blk_request;

libfuzzer_sys::fuzz_target!(|data: &[u8]| blk_request::run(data));
