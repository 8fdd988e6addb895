//! Every page of a physical memory image read and hashed: one `frames` row per page.

use rayon::prelude::*;

use crate::bitmap::BitVec;
use crate::page_hash::{zero_page_hash, PageHash};
use crate::phys_image::{ImageError, PhysImage, PhysPages, ReadFailure, PAGE};
use crate::read_and_hash::read_and_hash;
use crate::read_plan::{consecutive, ReadPlan};

/// Pages planned at once: the plan costs 16 bytes per page, so an image is planned a
/// piece at a time (1 GiB: 4 MiB of plan, a thousand windows to spread over the threads)
/// rather than all at once.
const PLAN_PAGES: usize = 1 << 18;

/// Bytes of table per page while hashing: PFN 8, hash 16, "hashed" flag 1.
const TABLE_BYTES_PER_PAGE: u64 = 25;

/// Type of the arrays sized by an image's page count: PFNs, hashes, "hashed" flags.
type Table = (Vec<u64>, Vec<[u8; 16]>, Vec<bool>);

/// Allocates the arrays for `total` pages, or None if the allocator refuses (instead of
/// aborting the process, as `vec!` and `with_capacity` do).
fn alloc_table(total: usize) -> Option<Table> {
    let mut pfn = Vec::new();
    let mut hashes = Vec::new();
    let mut hashed = Vec::new();
    pfn.try_reserve_exact(total).ok()?;
    hashes.try_reserve_exact(total).ok()?;
    hashed.try_reserve_exact(total).ok()?;
    hashes.resize(total, [0u8; 16]);
    hashed.resize(total, false);
    Some((pfn, hashes, hashed))
}

/// One row per physical page of an image: pfn, hash (16 bytes each), zero.
#[derive(Debug, Default)]
pub struct FrameTable {
    pub pfn: Vec<u64>,
    pub hashes: Vec<u8>,
    pub zero: BitVec,
}

impl FrameTable {
    pub fn len(&self) -> usize {
        self.pfn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pfn.is_empty()
    }

    pub fn hash(&self, row: usize) -> PageHash {
        let mut h = [0u8; 16];
        h.copy_from_slice(&self.hashes[row * 16..][..16]);
        h
    }
}

impl PhysImage {
    /// Reads and hashes every page, in parallel; `progress(done, total)` may stop it.
    pub fn hash_frames(
        &self,
        progress: &(dyn Fn(u64, u64) -> bool + Sync),
    ) -> Result<FrameTable, ImageError> {
        self.hash_window(0, self.pages(), progress)
    }

    /// Reads and hashes `count` pages of the image from its page `first` (pages counted
    /// across segments in order): one window of a large image, so that hashing it costs
    /// memory in proportion to the window, not to what the image declares.
    pub fn hash_window(
        &self,
        first: u64,
        count: u64,
        progress: &(dyn Fn(u64, u64) -> bool + Sync),
    ) -> Result<FrameTable, ImageError> {
        let total = count.min(self.pages().saturating_sub(first)) as usize;
        let (mut pfn, mut hashes, mut hashed) =
            alloc_table(total).ok_or_else(|| ImageError::TooLarge {
                path: self.path.clone(),
                pages: total as u64,
                bytes: (total as u64).saturating_mul(TABLE_BYTES_PER_PAGE),
            })?;
        let source = PhysPages {
            image: self,
            on_error: ReadFailure::Fails,
        };
        let (mut skip, mut row) = (first, 0usize);
        for s in &self.segments {
            let in_segment = s.len / PAGE;
            if skip >= in_segment {
                skip -= in_segment;
                continue;
            }
            let n = ((in_segment - skip) as usize).min(total - row);
            let start = s.paddr / PAGE + skip;
            skip = 0;
            pfn.extend((0..n as u64).map(|i| start + i));
            for at in (0..n).step_by(PLAN_PAGES) {
                let m = PLAN_PAGES.min(n - at);
                let plan = ReadPlan::new(consecutive((start + at as u64) * PAGE, m), m)?;
                let before = (row + at) as u64;
                read_and_hash(
                    &source,
                    &plan,
                    &mut hashes[row + at..][..m],
                    &mut hashed[row + at..][..m],
                    &|done| {
                        if progress(before + done, total as u64) {
                            Ok(())
                        } else {
                            Err(ImageError::Interrupted)
                        }
                    },
                )?;
            }
            row += n;
            if row == total {
                break;
            }
        }
        // Every page lies in a segment, and a failed read fails the whole: all are hashed.
        drop(hashed);
        let zero_hash = zero_page_hash();
        let zero = hashes
            .par_iter()
            .map(|h| *h == zero_hash)
            .collect::<Vec<bool>>();
        Ok(FrameTable {
            pfn,
            hashes: hashes.into_flattened(),
            zero: zero.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    use super::*;
    use crate::elf_core::{build_core_header, LoadSegment};
    use crate::page_hash::hash_page;
    use crate::phys_image::test_files::{page, write_temp};
    use crate::phys_image::ImageFormat;

    fn frames(path: &Path, format: Option<ImageFormat>) -> Result<FrameTable, ImageError> {
        PhysImage::open(path, format)?.hash_frames(&|_, _| true)
    }

    #[test]
    fn elf_with_memsz_beyond_filesz_reads_zeros() {
        let seg = LoadSegment {
            vaddr: 0,
            paddr: 0x10_0000,
            offset: 4096,
            filesz: PAGE,
            memsz: 3 * PAGE,
        };
        let mut bytes = build_core_header(&[seg]);
        bytes.resize(4096, 0);
        bytes.extend(page(7));
        let path = write_temp("elf-memsz", &bytes);
        let t = frames(&path, None).expect("hashes");
        assert_eq!(t.pfn, vec![0x100, 0x101, 0x102]);
        assert_eq!(t.hash(0), hash_page(&page(7)));
        assert_eq!(t.hash(2), zero_page_hash());
        assert!(!t.zero.get(0) && t.zero.get(1) && t.zero.get(2));
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn a_table_too_large_to_allocate_is_refused_not_aborted() {
        // 2^60 pages: 2^64 bytes of hashes, past isize::MAX, refused without allocating.
        assert!(alloc_table(1 << 60).is_none());
        let (pfn, hashes, hashed) = alloc_table(3).expect("small table");
        assert_eq!((pfn.capacity(), hashes.len(), hashed.len()), (3, 3, 3));
    }

    #[test]
    fn windows_put_together_are_the_whole() {
        let segs: Vec<LoadSegment> = [(0x10_0000u64, 8u64), (0x80_0000, 5), (0x200_0000, 3)]
            .iter()
            .scan(4096u64, |off, &(paddr, n)| {
                let seg = LoadSegment {
                    vaddr: 0,
                    paddr,
                    offset: *off,
                    filesz: n * PAGE,
                    memsz: n * PAGE,
                };
                *off += n * PAGE;
                Some(seg)
            })
            .collect();
        let mut bytes = build_core_header(&segs);
        bytes.resize(4096, 0);
        for i in 0..16u8 {
            bytes.extend(page(i % 5));
        }
        let path = write_temp("elf-windows", &bytes);
        let img = PhysImage::open(&path, None).expect("opens");
        let whole = img.hash_frames(&|_, _| true).expect("hashes");
        for window in [1u64, 3, 5, 7, 16, 40] {
            let (mut pfn, mut hashes) = (Vec::new(), Vec::new());
            let mut first = 0;
            while first < img.pages() {
                let t = img
                    .hash_window(first, window, &|_, _| true)
                    .expect("window");
                assert!(!t.is_empty() && t.len() as u64 <= window);
                first += t.len() as u64;
                pfn.extend(t.pfn);
                hashes.extend(t.hashes);
            }
            assert_eq!(
                (&pfn, &hashes),
                (&whole.pfn, &whole.hashes),
                "window {window}"
            );
        }
        assert!(img
            .hash_window(16, 10, &|_, _| true)
            .expect("past the end")
            .is_empty());
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn sparse_raw_holes_are_zero_pages() {
        let path = std::env::temp_dir().join(format!("dedupx-{}-sparse", std::process::id()));
        let f = File::create(&path).expect("create");
        f.set_len(1024 * PAGE).expect("sparse size");
        f.write_all_at(&page(5), 700 * PAGE).expect("write");
        drop(f);
        let img = PhysImage::open(&path, None).expect("opens");
        assert_eq!(img.format, ImageFormat::Raw);
        assert!(img.is_hole(0, PAGE));
        let t = img.hash_frames(&|_, _| true).expect("hashes");
        assert_eq!(t.len(), 1024);
        assert_eq!(t.zero.count_ones(), 1023);
        assert_eq!(t.hash(700), hash_page(&page(5)));
        std::fs::remove_file(path).ok();
    }
}
