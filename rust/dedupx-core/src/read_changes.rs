//! What changed in a process while dedupx read it.
//!
//! A scan reads a process in stages (smaps, pagemap, flags, contents, map counts) over
//! milliseconds to seconds, and nothing stops the process meanwhile: pages are faulted in,
//! unmapped, moved by `mremap`, mappings appear and go. The figures of such a scan describe
//! no single moment, so once everything is read the process's maps and pagemap are read
//! again and compared with the first reading; the result says how much moved.

use std::fs;
use std::path::Path;

use rayon::prelude::*;

use crate::error::{Result, ScanError};
use crate::maps::{parse_smaps, Vma};
use crate::pagemap::Pagemap;
use crate::process_scan::PIECE_PAGES;

/// How much of a process changed between the first reading and the re-check after the last.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadChanges {
    /// Pages of the first reading's mappings that now map another PFN, went, or came.
    /// Compared page by page in a process scan (a page that changed and changed back is not
    /// seen); a lower bound in a host snapshot (see [`Fingerprint`]).
    pub pages: u64,
    /// Mappings (start, end, perms, offset, inode) in the re-check and not the first reading.
    pub vmas_appeared: u64,
    /// Mappings in the first reading and not the re-check.
    pub vmas_vanished: u64,
    /// The process exited before the re-check (its map counts may be read after its exit).
    pub exited: bool,
}

impl ReadChanges {
    pub fn any(&self) -> bool {
        self.pages > 0 || self.vmas_appeared > 0 || self.vmas_vanished > 0 || self.exited
    }

    /// A process gone at the re-check: every page and mapping it had went.
    pub fn gone(present_pages: u64, vmas: usize) -> Self {
        Self {
            pages: present_pages,
            vmas_appeared: 0,
            vmas_vanished: vmas as u64,
            exited: true,
        }
    }
}

/// The mappings of `pid` now (`/proc/PID/maps`: the smaps headers without the page walk).
pub fn read_maps(root: &Path, pid: u32) -> Result<Vec<Vma>> {
    let path = root.join(pid.to_string()).join("maps");
    let bytes = fs::read(&path).map_err(|e| ScanError::from_proc_io(pid, path.clone(), e))?;
    // A process that exited leaves an empty maps file, not an error.
    if bytes.is_empty() && !root.join(pid.to_string()).exists() {
        return Err(ScanError::ProcessGone { pid });
    }
    parse_smaps(&String::from_utf8_lossy(&bytes), &path)
}

type VmaKey<'a> = (u64, u64, &'a str, u64, u64);

fn key(v: &Vma) -> VmaKey<'_> {
    (v.start, v.end, v.perms.as_str(), v.offset, v.inode)
}

/// Whether both readings list the same mappings in the same order, so that a mapping's
/// index in one is its index in the other.
pub fn same_mappings(a: &[Vma], b: &[Vma]) -> bool {
    a.iter().map(key).eq(b.iter().map(key))
}

/// (appeared, vanished): mappings only in `after`, and only in `before`.
pub fn diff_vmas(before: &[Vma], after: &[Vma]) -> (u64, u64) {
    let mut a: Vec<VmaKey> = before.iter().map(key).collect();
    let mut b: Vec<VmaKey> = after.iter().map(key).collect();
    a.sort_unstable();
    b.sort_unstable();
    let (mut i, mut j, mut appeared, mut vanished) = (0, 0, 0u64, 0u64);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                vanished += 1;
                i += 1;
            }
            (Some(_), None) => {
                vanished += 1;
                i += 1;
            }
            _ => {
                appeared += 1;
                j += 1;
            }
        }
    }
    (appeared, vanished)
}

/// Mappings larger than this (1 GiB) in which the first reading found no page are not read
/// again: sparse reservations of terabytes (allocators, sanitizers, JIT cages) would make the
/// re-check cost as much as the first reading, to find pages that came meanwhile into memory
/// nothing of the scan describes. Their pages are left out of `pages` (a lower bound there).
pub const SPARSE_MAPPING_PAGES: u64 = 1 << 18;

/// Whether a mapping's pagemap is read again, given how many pages the first reading found.
pub fn worth_rechecking(vma: &Vma, first_pages: u64) -> bool {
    first_pages > 0 || vma.pages() <= SPARSE_MAPPING_PAGES
}

/// The first reading's PFN of each of its pages (by row), None where it had none (swapped
/// out): what a page is for this comparison.
pub type FirstFrames<'a> = &'a (dyn Fn(usize) -> Option<u64> + Sync);

/// Pages of `vmas` (the first reading) whose PFN differs now from the first reading's (its
/// present or swapped pages: vma index and address by row, in address order, and
/// `first`'s PFN), or that are present now and were not then. Mappings are read again in
/// pieces, in parallel on the current rayon pool.
pub fn changed_pages(
    pagemap: &Pagemap,
    vmas: &[Vma],
    vma_id: &[u32],
    vaddr: &[u64],
    first: FirstFrames,
) -> Result<u64> {
    // The first reading's rows of each mapping.
    let mut rows = Vec::with_capacity(vmas.len());
    let mut row = 0usize;
    for id in 0..vmas.len() {
        let begin = row;
        while row < vma_id.len() && vma_id[row] as usize == id {
            row += 1;
        }
        rows.push(begin..row);
    }
    let per_vma: Vec<u64> = vmas
        .par_iter()
        .zip(rows)
        .map(|(vma, rows)| {
            if !vma.in_pagemap() || !worth_rechecking(vma, rows.len() as u64) {
                return Ok(0);
            }
            let before = &vaddr[rows.clone()];
            let base = rows.start;
            let pieces = pagemap.pieces(vma.start, vma.end, PIECE_PAGES);
            // Each piece with the first reading's rows in it (pieces are sorted and disjoint).
            let rows: Vec<(u64, u64, usize, usize)> = pieces
                .iter()
                .map(|&(a, b)| {
                    let lo = before.partition_point(|&va| va < a);
                    (a, b, lo, before.partition_point(|&va| va < b))
                })
                .collect();
            // First-reading pages outside every piece are no longer mapped.
            let mut covered = 0usize;
            let mut outside = 0u64;
            for &(_, _, lo, hi) in &rows {
                outside += count_frames(first, base + covered.min(lo)..base + lo);
                covered = covered.max(hi);
            }
            outside += count_frames(first, base + covered..base + before.len());
            let inside: u64 = rows
                .par_iter()
                .map(|&(a, b, lo, hi)| {
                    compare_piece(pagemap, a, b, &before[lo..hi], first, base + lo)
                })
                .sum::<Result<u64>>()?;
            Ok(outside + inside)
        })
        .collect::<Result<_>>()?;
    Ok(per_vma.iter().sum())
}

/// First-reading rows that had a frame.
fn count_frames(first: FirstFrames, rows: std::ops::Range<usize>) -> u64 {
    rows.filter(|&k| first(k).is_some()).count() as u64
}

/// Changes within `[a, b)`, given the first reading's pages there: addresses `before`, from
/// row `base` on.
fn compare_piece(
    pagemap: &Pagemap,
    a: u64,
    b: u64,
    before: &[u64],
    first: FirstFrames,
    base: usize,
) -> Result<u64> {
    let mut changed = 0u64;
    let mut k = 0usize;
    pagemap.for_each_mapped(a, b, |va, now| {
        // Pages of the first reading before `va` are no longer mapped.
        while k < before.len() && before[k] < va {
            changed += u64::from(first(base + k).is_some());
            k += 1;
        }
        if k < before.len() && before[k] == va {
            if first(base + k) != now.pfn() {
                changed += 1;
            }
            k += 1;
        } else if now.pfn().is_some() {
            changed += 1;
        }
    })?;
    Ok(changed + count_frames(first, base + k..base + before.len()))
}

/// A process's present pages condensed to a count and an order-independent sum, for a host
/// snapshot, which cannot keep every (address, PFN) pair of every process: two readings with
/// equal fingerprints very probably map the same pages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub present: u64,
    pub sum: u64,
}

impl Fingerprint {
    pub fn add(&mut self, vaddr: u64, pfn: u64) {
        self.present += 1;
        self.sum = self.sum.wrapping_add(mix(vaddr ^ pfn.rotate_left(32)));
    }

    /// At least how many pages changed between `self` and `now`, given `fresh`: pages
    /// mapped now whose PFN the first reading never saw. At least one if the sums differ.
    pub fn changed_since(&self, now: &Fingerprint, fresh: u64) -> u64 {
        let n = fresh.max(self.present.abs_diff(now.present));
        if n == 0 && self.sum != now.sum {
            1
        } else {
            n
        }
    }
}

/// splitmix64's finalizer: spreads neighbouring addresses over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pagemap::PagemapEntry;

    fn vma(start: u64, end: u64, perms: &str) -> Vma {
        let mut v = parse_smaps(
            &format!("{start:x}-{end:x} {perms} 00000000 00:00 0\n"),
            Path::new("t"),
        )
        .expect("parse")
        .remove(0);
        v.perms = perms.to_string();
        v
    }

    #[test]
    fn diff_counts_mappings_on_each_side() {
        let before = [vma(0x1000, 0x3000, "rw-p"), vma(0x5000, 0x6000, "r--p")];
        let after = [
            vma(0x1000, 0x3000, "rw-p"),
            vma(0x5000, 0x6000, "r-xp"),
            vma(0x8000, 0x9000, "rw-p"),
        ];
        assert_eq!(diff_vmas(&before, &after), (2, 1));
        assert_eq!(diff_vmas(&before, &before), (0, 0));
        assert!(same_mappings(&before, &before));
        assert!(!same_mappings(&before, &after[..2]));
        // Same mappings in another order: their indices differ.
        let swapped = [before[1].clone(), before[0].clone()];
        assert!(!same_mappings(&before, &swapped));
    }

    #[test]
    fn own_pages_unchanged_then_changed() {
        let root = Path::new("/proc");
        let pid = std::process::id();
        const PAGES: usize = 8;
        let mem = vec![1u8; crate::PAGE_SIZE * (PAGES + 1)];
        let start = (mem.as_ptr() as u64).next_multiple_of(crate::PAGE_SIZE as u64);
        // Only these pages of our own memory, which no other thread touches.
        let one = [vma(
            start,
            start + (PAGES * crate::PAGE_SIZE) as u64,
            "rw-p",
        )];
        let pagemap = Pagemap::open(root, pid).expect("pagemap");
        let (mut ids, mut vas, mut es) = (Vec::new(), Vec::new(), Vec::new());
        pagemap
            .for_each_mapped(one[0].start, one[0].end, |va, e| {
                ids.push(0);
                vas.push(va);
                es.push(e);
            })
            .expect("read");
        assert_eq!(vas.len(), PAGES);
        let now = changed_pages(&pagemap, &one, &ids, &vas, &|k| es[k].pfn()).expect("recheck");
        assert_eq!(now, 0);
        // Had the first reading seen another PFN at the first page, that page changed.
        es[0] = PagemapEntry((1u64 << 63) | (es[0].pfn().unwrap_or(0) ^ 1));
        let now = changed_pages(&pagemap, &one, &ids, &vas, &|k| es[k].pfn()).expect("recheck");
        assert_eq!(now, 1);
        std::hint::black_box(&mem);
    }

    #[test]
    fn fingerprint_lower_bound() {
        let mut a = Fingerprint::default();
        let mut b = Fingerprint::default();
        for (va, pfn) in [(1, 10), (2, 20), (3, 30)] {
            a.add(va << 12, pfn);
        }
        for (va, pfn) in [(1, 10), (2, 21), (3, 30)] {
            b.add(va << 12, pfn);
        }
        assert_eq!(a.changed_since(&a, 0), 0);
        assert_eq!(a.changed_since(&b, 0), 1);
        assert_eq!(a.changed_since(&b, 1), 1);
        b.add(4 << 12, 40);
        b.add(5 << 12, 50);
        assert_eq!(a.changed_since(&b, 0), 2);
    }
}
