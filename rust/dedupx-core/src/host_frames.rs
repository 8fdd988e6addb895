//! The `frames` rows after pass 1: every PFN of System RAM with its flags and map count,
//! and a hash wherever its content is known (pass 1, the file cache) or can be read from
//! a physical memory source.

use crate::bitmap::BitVec;
use crate::error::Result;
use crate::host_scan::HostScan;
use crate::kpageflags::{self, KPF_MMAP, KPF_ZERO_PAGE};
use crate::page_hash::{zero_page_hash, PageHash};
use crate::page_table::NO_HASH;
use crate::phys_image::{PhysImage, PhysPages, ReadFailure, PAGE};
use crate::read_and_hash::read_and_hash;
use crate::read_plan::{ReadPlan, ReadTask};

/// One piece of the `frames` frame: consecutive PFNs of one System RAM range.
#[derive(Debug, Default)]
pub struct FrameChunk {
    pub pfn: Vec<u64>,
    pub kpageflags: Vec<u64>,
    pub mapcount: Vec<u64>,
    /// Index into the host's per-PFN hashes, or `LOCAL | i` for `local_hashes[i]`, or
    /// NO_HASH.
    pub hash_slot: Vec<u32>,
    /// Hashes of pages read from a physical memory source in this chunk (16 bytes each).
    pub local_hashes: Vec<u8>,
    pub zero: BitVec,
    /// Some process maps it.
    pub mapped: BitVec,
}

/// Marks a hash slot as an index into `FrameChunk::local_hashes`.
pub const LOCAL: u32 = 1 << 31;

impl HostScan {
    /// Frames for PFNs `[start, end)` (which lie in System RAM): the flags of the PFNs no
    /// process maps are read now, and their map counts only where the flags say a page
    /// table maps them (elsewhere the count is 0); those of mapped PFNs are pass 1's.
    /// Unmapped pages are hashed from `phys` when there is one (flags first, then contents).
    pub fn frames_chunk(
        &self,
        start: u64,
        end: u64,
        phys: Option<&PhysImage>,
    ) -> Result<FrameChunk> {
        let kpage = &self.kpage;
        let pfns: Vec<u64> = (start..end).collect();
        let first = self.pfns.partition_point(|&p| p < start);
        let last = self.pfns.partition_point(|&p| p < end);
        let mapped_here = &self.pfns[first..last];
        let unmapped: Vec<u64> = {
            let mut next = 0;
            pfns.iter()
                .copied()
                .filter(|&pfn| {
                    let mapped = mapped_here.get(next) == Some(&pfn);
                    next += usize::from(mapped);
                    !mapped
                })
                .collect()
        };
        let flags = kpage.read_flags(&unmapped)?;
        let in_page_tables: Vec<u64> = unmapped
            .iter()
            .zip(&flags)
            .filter(|&(_, &f)| kpageflags::has(f, KPF_MMAP))
            .map(|(&pfn, _)| pfn)
            .collect();
        let some_counts = kpage.read_counts(&in_page_tables)?;
        let n = pfns.len();
        let mut c = FrameChunk {
            kpageflags: Vec::with_capacity(n),
            mapcount: Vec::with_capacity(n),
            hash_slot: Vec::with_capacity(n),
            ..FrameChunk::default()
        };
        let zero_hash = zero_page_hash();
        let mut to_read = Vec::new();
        let mut next = first;
        // Cursors into `flags` (one per unmapped PFN) and `some_counts` (one per unmapped
        // PFN with KPF_MMAP), both in PFN order, and into the file cache (sorted by PFN):
        // a search per PFN cost 20 steps each with a million cached pages.
        let (mut u, mut k) = (0, 0);
        let mut cached = self.file_cache.partition_point(|e| e.0 < start);
        for (i, &pfn) in pfns.iter().enumerate() {
            let mapped = self.pfns.get(next) == Some(&pfn);
            let (f, cnt, slot) = if mapped {
                next += 1;
                self.mapped_row(next - 1)
            } else {
                let f = flags[u];
                u += 1;
                let cnt = if kpageflags::has(f, KPF_MMAP) {
                    k += 1;
                    some_counts[k - 1]
                } else {
                    0
                };
                if kpageflags::has(f, KPF_ZERO_PAGE) {
                    (f, cnt, NO_HASH)
                } else if let Some(h) = self.cached_hash(&mut cached, pfn) {
                    let local = (c.local_hashes.len() / 16) as u32;
                    c.local_hashes.extend_from_slice(h);
                    (f, cnt, LOCAL | local)
                } else {
                    if phys.is_some() {
                        to_read.push(i);
                    }
                    (f, cnt, NO_HASH)
                }
            };
            c.kpageflags.push(f);
            c.mapcount.push(cnt);
            c.hash_slot.push(slot);
            c.mapped.push(mapped);
        }
        if let Some(phys) = phys {
            hash_physical(phys, &pfns, &to_read, &mut c)?;
        }
        for &slot in &c.hash_slot {
            let zero = if slot == NO_HASH {
                false
            } else if slot & LOCAL != 0 {
                let i = (slot & !LOCAL) as usize * 16;
                c.local_hashes[i..i + 16] == zero_hash[..]
            } else {
                self.zero.get(slot as usize)
            };
            c.zero.push(zero);
        }
        c.pfn = pfns;
        Ok(c)
    }

    /// The file cache's hash of `pfn`, if it has one; `cursor` walks the file cache as the
    /// PFNs asked for rise.
    fn cached_hash(&self, cursor: &mut usize, pfn: u64) -> Option<&PageHash> {
        let rest = &self.file_cache[*cursor..];
        *cursor += rest.iter().take_while(|e| e.0 < pfn).count();
        match self.file_cache.get(*cursor) {
            Some((p, h)) if *p == pfn => Some(h),
            _ => None,
        }
    }
}

/// Reads and hashes `pfns[row]` for each of `rows` from `phys`; a page the source refuses
/// keeps no hash.
fn hash_physical(phys: &PhysImage, pfns: &[u64], rows: &[usize], c: &mut FrameChunk) -> Result<()> {
    let tasks = rows
        .iter()
        .enumerate()
        .map(|(k, &row)| ReadTask {
            addr: pfns[row] * PAGE,
            stream: 0,
            slot: k as u32,
        })
        .collect();
    let plan = ReadPlan::new(tasks, rows.len())?;
    let mut hashes = vec![[0u8; 16]; rows.len()];
    let mut hashed = vec![false; rows.len()];
    let source = PhysPages {
        image: phys,
        on_error: ReadFailure::SkipsPage,
    };
    read_and_hash(&source, &plan, &mut hashes, &mut hashed, &|_| Ok(()))?;
    for ((&row, h), ok) in rows.iter().zip(&hashes).zip(hashed) {
        if ok {
            let i = (c.local_hashes.len() / 16) as u32;
            c.local_hashes.extend_from_slice(h);
            c.hash_slot[row] = LOCAL | i;
        }
    }
    Ok(())
}
