//! dedupx's own process as an observer that must not count.
//!
//! While dedupx runs it maps the same libraries as its targets (libc, libpython, ...), and
//! each of its own mappings of a page raises that page's map count: read as is, the PSS of
//! every process that shares those pages would be under-counted (2.4% on a 50 MB Python
//! process), unlike the `smaps_rollup` read once dedupx has gone. So the file pages dedupx
//! maps itself are read from its own pagemap, and each target page's map count is lowered
//! by how many times dedupx maps it: the counts are those of a host without dedupx.

use std::path::Path;

use crate::error::Result;
use crate::maps::Vma;
use crate::pagemap::Pagemap;
use crate::read_changes::read_maps;

/// The PFNs of file pages (page cache, shmem files) this process maps, each with how many
/// times it maps it, sorted by PFN.
#[derive(Debug, Default, Clone)]
pub struct OwnPages {
    pfns: Vec<(u64, u64)>,
}

impl OwnPages {
    /// Reads this very process's file mappings and their pagemap. Only file mappings: they
    /// are what a target can share with dedupx (its anonymous memory is its own, and may
    /// reserve huge ranges whose pagemap is not worth reading).
    pub fn read() -> Result<Self> {
        let root = Path::new("/proc");
        let pid = std::process::id();
        let vmas = read_maps(root, pid)?;
        let pagemap = Pagemap::open(root, pid)?;
        let mut pfns = Vec::new();
        for vma in vmas.iter().filter(|v| is_file(v)) {
            pagemap.for_each_mapped(vma.start, vma.end, |_, e| {
                if let Some(pfn) = e.pfn() {
                    pfns.push(pfn);
                }
            })?;
        }
        Ok(Self::from_pfns(pfns))
    }

    pub fn from_pfns(mut pfns: Vec<u64>) -> Self {
        pfns.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for pfn in pfns {
            match out.last_mut() {
                Some((p, n)) if *p == pfn => *n += 1,
                _ => out.push((pfn, 1)),
            }
        }
        Self { pfns: out }
    }

    /// Lowers `counts[i]` (the map count of `pfns[i]`, sorted) by this process's own
    /// mappings of that page, never below 1: a page a target maps has at least that
    /// mapping. Returns how many PFNs were corrected.
    pub fn correct(&self, pfns: &[u64], counts: &mut [u64]) -> u64 {
        let mut corrected = 0;
        let mut j = 0;
        for (pfn, count) in pfns.iter().zip(counts.iter_mut()) {
            while j < self.pfns.len() && self.pfns[j].0 < *pfn {
                j += 1;
            }
            if let Some(&(p, own)) = self.pfns.get(j) {
                if p == *pfn && *count > 1 {
                    *count = count.saturating_sub(own).max(1);
                    corrected += 1;
                }
            }
        }
        corrected
    }
}

fn is_file(v: &Vma) -> bool {
    v.inode != 0 && v.in_pagemap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_counts_of_own_pages_only() {
        let own = OwnPages::from_pfns(vec![7, 3, 7]);
        let pfns = [1, 3, 5, 7];
        let mut counts = [4, 2, 3, 5];
        assert_eq!(own.correct(&pfns, &mut counts), 2);
        assert_eq!(counts, [4, 1, 3, 3]);
        // A page mapped once, by the target, stays at 1.
        let mut counts = [1, 1, 1, 1];
        assert_eq!(own.correct(&pfns, &mut counts), 0);
        assert_eq!(counts, [1, 1, 1, 1]);
    }

    #[test]
    fn reads_own_libraries() {
        let own = OwnPages::read().expect("own pages");
        // The test binary itself is a file mapping with pages present.
        assert!(!own.pfns.is_empty());
    }
}
