#![no_main]
//! /proc/PID/smaps text: VMAs or a ScanError::Parse, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = dedupx_core::maps::parse_smaps(&text, std::path::Path::new("/proc/1/smaps"));
});
