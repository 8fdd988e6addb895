#![no_main]
//! /proc/iomem text: System RAM ranges with start <= end, or an IomemError.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(ram) = dedupx_core::iomem::system_ram(&text) {
        for (a, b) in ram {
            assert!(a < b);
        }
    }
});
