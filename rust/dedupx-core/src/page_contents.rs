//! Reading and hashing the contents of each distinct PFN once, in parallel windows.
//!
//! Each PFN is read through the first readable virtual page that maps it. A window of
//! nearby pages is copied with one `process_vm_readv`, re-checked against the pagemap (a
//! page remapped meanwhile is dropped, not mis-attributed), zero-tested and hashed while hot
//! in cache. The kernel's zero page is known to hold zeros and is never read.

use std::fs::File;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rayon::prelude::*;

use crate::error::{Result, ScanError};
use crate::kpageflags::{self, KPF_ZERO_PAGE};
use crate::maps::Vma;
use crate::page_hash::{zero_page_hash, PageHash, PageHasher};
use crate::page_table::Contents;
use crate::pagemap::{Pagemap, PagemapEntry};
use crate::process_memory::read_pages;
use crate::PAGE_SIZE;

/// Pages copied by one `process_vm_readv` and hashed while still in L2.
const WINDOW_PAGES: usize = 128;
/// A window's pages lie within this many pages of address space, so that the pagemap
/// re-check after the copy is one small read.
const WINDOW_SPAN: u64 = 2048;

/// The mapped pages of a process, in address order, with each page's distinct-PFN index.
pub struct MappedPages<'a> {
    pub vma_id: &'a [u32],
    pub vaddr: &'a [u64],
    pub entries: &'a [PagemapEntry],
    /// Index into the sorted distinct PFNs, u32::MAX where not present.
    pub uidx: &'a [u32],
}

/// What reading the contents found, besides the hashes.
#[derive(Debug, Default, Clone, Copy)]
pub struct ContentStats {
    pub hashed_pfns: u64,
    pub unreadable_pfns: u64,
    pub vanished_pfns: u64,
}

#[allow(clippy::too_many_arguments)]
pub fn hash_contents(
    pid: u32,
    pagemap: &Pagemap,
    mem: Option<&File>,
    vmas: &[Vma],
    pages: &MappedPages,
    flags: &[u64],
    check: &(dyn Fn(&str, u64, u64) -> Result<()> + Sync),
) -> Result<(Contents, ContentStats)> {
    let n = flags.len();
    let mut contents = Contents::unread(n);
    let mut reader = vec![u32::MAX; n];
    let mut zero_pages = 0u64;
    for (i, e) in pages.entries.iter().enumerate() {
        if !e.present() {
            continue;
        }
        let u = pages.uidx[i] as usize;
        if kpageflags::has(flags[u], KPF_ZERO_PAGE) {
            if !contents.hashed[u] {
                contents.hashes[u] = zero_page_hash();
                contents.hashed[u] = true;
                zero_pages += 1;
            }
        } else if reader[u] == u32::MAX && vmas[pages.vma_id[i] as usize].readable() {
            reader[u] = i as u32;
        }
    }
    let mut work: Vec<u32> = reader.iter().copied().filter(|&r| r != u32::MAX).collect();
    let unreadable = (n - work.len()) as u64 - zero_pages;
    drop(reader);
    work.sort_unstable();
    let windows = windows(&work, pages.vaddr);
    let total = work.len() as u64;
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let hashed = AtomicU64::new(0);
    check("hash", 0, total)?;
    {
        let hashes = DisjointSlots::new(&mut contents.hashes);
        let flags_out = DisjointSlots::new(&mut contents.hashed);
        windows
            .par_iter()
            .try_for_each_init(WindowBuffers::default, |bufs, w| {
                if stop.load(Ordering::Relaxed) {
                    return Err(ScanError::Interrupted);
                }
                let idx = &work[w.clone()];
                let read = bufs.hash_window(pid, mem, pagemap, pages, idx, |u, h| {
                    hashes.write(u as usize, h);
                    flags_out.write(u as usize, true);
                })?;
                hashed.fetch_add(read, Ordering::Relaxed);
                let d = done.fetch_add(idx.len() as u64, Ordering::Relaxed) + idx.len() as u64;
                check("hash", d, total).inspect_err(|_| stop.store(true, Ordering::Relaxed))
            })?;
    }
    let hashed = hashed.into_inner();
    let stats = ContentStats {
        hashed_pfns: hashed + zero_pages,
        unreadable_pfns: unreadable,
        vanished_pfns: total - hashed,
    };
    Ok((contents, stats))
}

/// Splits the sorted page indices into windows of at most WINDOW_PAGES within WINDOW_SPAN.
fn windows(work: &[u32], vaddr: &[u64]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=work.len() {
        let split = i == work.len()
            || i - start == WINDOW_PAGES
            || vaddr[work[i] as usize] - vaddr[work[start] as usize]
                >= WINDOW_SPAN * PAGE_SIZE as u64;
        if split {
            out.push(start..i);
            start = i;
        }
    }
    out
}

/// Lets parallel windows write results for distinct PFNs straight into one vector, with no
/// per-window result lists to merge (which would cost 24 bytes per PFN at the peak).
struct DisjointSlots<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: the slots are written from several threads, but never the same slot twice (see
// `write`), and the vector is not read until the borrow ends.
unsafe impl<T: Send> Sync for DisjointSlots<'_, T> {}

impl<'a, T> DisjointSlots<'a, T> {
    fn new(v: &'a mut [T]) -> Self {
        Self {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            _borrow: PhantomData,
        }
    }

    fn write(&self, i: usize, value: T) {
        assert!(i < self.len, "slot {i} of {}", self.len);
        // SAFETY: in bounds (checked above). Slot i belongs to one PFN, which has exactly one
        // reader page, and the windows partition the reader pages: no two threads write the
        // same slot, and nothing reads the vector while this borrow lives. T is Copy-like
        // (hash arrays and bools), so overwriting without dropping leaks nothing.
        unsafe { self.ptr.add(i).write(value) }
    }
}

#[derive(Default)]
struct WindowBuffers {
    hasher: PageHasher,
    data: Vec<u8>,
    ok: Vec<bool>,
    vaddrs: Vec<u64>,
    recheck: Vec<u64>,
    kept: Vec<(usize, u32)>,
    hashes: Vec<(PageHash, bool)>,
}

impl WindowBuffers {
    /// Copies, re-checks and hashes one window; calls `emit(pfn index, hash)` per page read
    /// and returns how many were read.
    fn hash_window(
        &mut self,
        pid: u32,
        mem: Option<&File>,
        pagemap: &Pagemap,
        pages: &MappedPages,
        idx: &[u32],
        mut emit: impl FnMut(u32, PageHash),
    ) -> Result<u64> {
        self.vaddrs.clear();
        self.vaddrs
            .extend(idx.iter().map(|&i| pages.vaddr[i as usize]));
        self.data.resize(idx.len() * PAGE_SIZE, 0);
        read_pages(pid, mem, &self.vaddrs, &mut self.data, &mut self.ok)?;
        // The mapping may have changed between pagemap and copy: keep only pages whose
        // PFN is still the one whose flags we read.
        let first = self.vaddrs[0];
        let span = ((self.vaddrs[idx.len() - 1] - first) / PAGE_SIZE as u64 + 1) as usize;
        pagemap.read_range(first, span, &mut self.recheck)?;
        self.kept.clear();
        for (k, &i) in idx.iter().enumerate() {
            let slot = ((self.vaddrs[k] - first) / PAGE_SIZE as u64) as usize;
            if self.ok[k]
                && PagemapEntry(self.recheck[slot]).pfn() == pages.entries[i as usize].pfn()
            {
                self.kept.push((k, pages.uidx[i as usize]));
            }
        }
        let data = &self.data;
        let kept: Vec<&[u8]> = self
            .kept
            .iter()
            .map(|&(k, _)| &data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE])
            .collect();
        self.hasher.hash_or_zero(&kept, &mut self.hashes);
        for (&(_, u), &(h, _)) in self.kept.iter().zip(&self.hashes) {
            emit(u, h);
        }
        let read = self.kept.len() as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_respect_size_and_span() {
        let vaddr: Vec<u64> = (0..300u64)
            .map(|i| if i < 200 { i * 4096 } else { (i + 5000) * 4096 })
            .collect();
        let work: Vec<u32> = (0..300).collect();
        let w = windows(&work, &vaddr);
        assert_eq!(w, vec![0..128, 128..200, 200..300]);
    }
}
