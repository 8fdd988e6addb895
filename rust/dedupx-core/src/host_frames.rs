//! The `frames` rows after pass 1: every PFN some process maps, every PFN whose content is
//! known (the file cache) or can be read from a physical memory source, and every other
//! PFN a page table maps, with its flags, map count and hash. The rest of System RAM
//! (free memory, the kernel's own, page cache no one maps and dedupx did not read) gets no
//! row: its flags are read and counted by class ([`ChunkCoverage`]), which is all a row said.

use crate::bitmap::BitVec;
use crate::error::Result;
use crate::host_scan::HostScan;
use crate::kpageflags::{
    self, KPF_ANON, KPF_BUDDY, KPF_MMAP, KPF_NOPAGE, KPF_SWAPBACKED, KPF_ZERO_PAGE,
};
use crate::page_hash::{zero_page_hash, PageHash};
use crate::page_table::NO_HASH;
use crate::phys_image::{PhysImage, PhysPages, ReadFailure, PAGE};
use crate::read_and_hash::read_and_hash;
use crate::read_plan::{ReadPlan, ReadTask};

/// One piece of the `frames` frame: PFNs of one System RAM range, in order.
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
    /// All the chunk's PFNs, with a row or without, by coverage class.
    pub coverage: ChunkCoverage,
}

/// The PFNs of RAM of a chunk by coverage class (docs/metrics.md, "Coverage"): the one
/// definition of the classes, for PFNs with a `frames` row and those without one alike.
/// A class counts only unhashed PFNs; those no process maps are told apart by their flags.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChunkCoverage {
    pub pages: u64,
    pub hashed: u64,
    /// Hashed through a process that maps it (the rest: the page cache walk or kcore).
    pub hashed_mapped: u64,
    /// KPF_NOPAGE: no struct page (a hole in the memory map).
    pub no_page: u64,
    /// In the buddy allocator: KPF_BUDDY on the head page of a free block; its tails carry
    /// no flags at all.
    pub free: u64,
    /// On an LRU list and neither anon nor swap-backed.
    pub unmapped_page_cache: u64,
    pub unmapped_anon_shmem: u64,
    /// Some process maps it, yet it could not be read.
    pub mapped_unread: u64,
}

impl ChunkCoverage {
    fn add(&mut self, flags: u64, hashed: bool, mapped: bool) {
        let has = |bit| kpageflags::has(flags, bit);
        let unmapped = !hashed && !mapped;
        self.pages += 1;
        self.hashed += u64::from(hashed);
        self.hashed_mapped += u64::from(hashed && mapped);
        self.no_page += u64::from(!hashed && has(KPF_NOPAGE));
        self.free += u64::from(unmapped && (has(KPF_BUDDY) || flags == 0));
        self.unmapped_page_cache += u64::from(unmapped && kpageflags::is_file_cache(flags));
        self.unmapped_anon_shmem += u64::from(unmapped && (has(KPF_ANON) || has(KPF_SWAPBACKED)));
        self.mapped_unread += u64::from(!hashed && mapped);
    }
}

/// Marks a hash slot as an index into `FrameChunk::local_hashes`.
pub const LOCAL: u32 = 1 << 31;

impl HostScan {
    /// Frames for PFNs `[start, end)` (which lie in System RAM): the flags of the PFNs no
    /// process maps are read now, and their map counts only where the flags say a page
    /// table maps them (elsewhere the count is 0); those of mapped PFNs are pass 1's.
    /// Unmapped pages are hashed from `phys` when there is one (flags first, then contents).
    /// A PFN that would have no hash, no map count and no process gets no row, only a count
    /// in `coverage`.
    pub fn frames_chunk(
        &self,
        start: u64,
        end: u64,
        phys: Option<&PhysImage>,
    ) -> Result<FrameChunk> {
        let kpage = &self.kpage;
        let first = self.pfns.partition_point(|&p| p < start);
        let last = self.pfns.partition_point(|&p| p < end);
        let mapped_here = &self.pfns[first..last];
        let unmapped: Vec<u64> = {
            let mut next = 0;
            (start..end)
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
        let n = mapped_here.len() + in_page_tables.len();
        let mut c = FrameChunk {
            pfn: Vec::with_capacity(n),
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
        for pfn in start..end {
            let mapped = self.pfns.get(next) == Some(&pfn);
            let (f, cnt, slot) = if mapped {
                next += 1;
                self.mapped_row(next - 1)
            } else {
                let f = flags[u];
                u += 1;
                let in_table = kpageflags::has(f, KPF_MMAP);
                let cnt = if in_table {
                    k += 1;
                    some_counts[k - 1]
                } else {
                    0
                };
                let zero_page = kpageflags::has(f, KPF_ZERO_PAGE);
                // The walk hashed its file pages some seconds ago; one reclaimed since
                // may hold anything now (an anon page, free memory). Its old hash stays
                // only while the flags read now still say page cache.
                let hash = self
                    .cached_hash(&mut cached, pfn)
                    .filter(|_| !zero_page && kpageflags::is_file_cache(f));
                if let Some(h) = hash {
                    let local = (c.local_hashes.len() / 16) as u32;
                    c.local_hashes.extend_from_slice(h);
                    (f, cnt, LOCAL | local)
                } else if phys.is_some() && !zero_page {
                    to_read.push(c.pfn.len());
                    (f, cnt, NO_HASH)
                } else if in_table {
                    (f, cnt, NO_HASH)
                } else {
                    c.coverage.add(f, false, false);
                    continue;
                }
            };
            c.pfn.push(pfn);
            c.kpageflags.push(f);
            c.mapcount.push(cnt);
            c.hash_slot.push(slot);
            c.mapped.push(mapped);
        }
        if let Some(phys) = phys {
            let pfns = std::mem::take(&mut c.pfn);
            hash_physical(phys, &pfns, &to_read, &mut c)?;
            c.pfn = pfns;
        }
        for (i, &slot) in c.hash_slot.iter().enumerate() {
            c.coverage
                .add(c.kpageflags[i], slot != NO_HASH, c.mapped.get(i));
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
