#![no_main]

#[path = "../targets/memory_table.rs"]
mod memory_table;

libfuzzer_sys::fuzz_target!(|data: &[u8]| memory_table::run(data));
