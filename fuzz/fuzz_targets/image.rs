#![no_main]
//! The whole image path (format by magic, segment checks, reading and hashing): any file
//! opens into readable, non-overlapping segments below 2^52 or gives an ImageError.
use dedupx_core::phys_image::PhysImage;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// Hash only small images: the allowance for zero-filled tails (1 GiB) would make each
/// run slow without exercising anything new.
const MAX_HASHED_PAGES: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let (path, _) = common::scratch("image", data);
    let Ok(img) = PhysImage::open(&path, None) else {
        return;
    };
    let mut end = 0u64;
    for s in &img.segments {
        assert!(s.paddr >= end, "segments sorted and disjoint");
        end = s.paddr.checked_add(s.len).expect("no wrap");
        assert!(end <= dedupx_core::segments::PHYS_LIMIT);
    }
    let mut buf = vec![0u8; 4096];
    for pfn in [
        0,
        1,
        u64::MAX,
        u64::MAX >> 12,
        (end >> 12).saturating_sub(1),
    ] {
        let _ = img.read_page(pfn, &mut buf);
    }
    if img.pages() <= MAX_HASHED_PAGES {
        if let Ok(t) = img.hash_frames(&|_, _| true) {
            assert_eq!(t.len() as u64, img.pages());
        }
    }
});
