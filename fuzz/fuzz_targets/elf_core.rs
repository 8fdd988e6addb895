#![no_main]
//! ELF core program headers: any bytes give segments or an ElfError, never a panic.
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (_, file) = common::scratch("elf", data);
    let _ = dedupx_core::elf_core::read_load_segments(&file, data.len() as u64);
});
