#![no_main]
//! LiME records: any bytes give ranges inside the file or a LimeError.
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (_, file) = common::scratch("lime", data);
    let len = data.len() as u64;
    if let Ok(ranges) = dedupx_core::lime::read_ranges(&file, len) {
        for r in ranges {
            assert!(r.offset.checked_add(r.len).is_some_and(|end| end <= len));
        }
    }
});
