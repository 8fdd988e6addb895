//! Reading and hashing the contents of each distinct PFN once, in parallel windows.
//!
//! Each PFN is read through the first readable virtual page that maps it. A window of
//! nearby pages is copied with one `process_vm_readv`, re-checked against the pagemap (a
//! page remapped meanwhile is dropped, not mis-attributed), zero-tested and hashed while hot
//! in cache. The kernel's zero page is known to hold zeros and is never read.

use std::fs::File;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

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

/// One distinct PFN to read: through page `vaddr` of process `pid`, into slot `slot`
/// (the PFN's index among the sorted distinct PFNs). 16 bytes: there is one per PFN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTask {
    pub vaddr: u64,
    pub pid: u32,
    pub slot: u32,
}

impl ReadTask {
    fn order(&self) -> (u32, u64) {
        (self.pid, self.vaddr)
    }
}

/// The files a window needs from its process: pagemap for the re-check after the copy,
/// and /proc/PID/mem as the fallback for pages under PROT_NONE.
#[derive(Clone)]
pub struct ProcessFiles {
    pub pagemap: Pagemap,
    pub mem: Option<Arc<File>>,
}

impl ProcessFiles {
    pub fn open(proc_root: &Path, pid: u32) -> Result<Self> {
        let pagemap = Pagemap::open(proc_root, pid)?;
        let mem = File::open(proc_root.join(pid.to_string()).join("mem"))
            .ok()
            .map(Arc::new);
        Ok(Self { pagemap, mem })
    }
}

/// What reading found besides the hashes.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadStats {
    pub hashed: u64,
    /// Pages that failed to copy or changed mapping while being read, or whose process
    /// exited (when that is tolerated).
    pub vanished: u64,
}

/// Reads and hashes each task's page into `contents` at its slot; `pfns[slot]` is the PFN
/// the page must still map. `tasks` must be sorted (by pid, then address) and name each
/// slot at most once. With `tolerate_exit`, a process
/// that exits mid-read loses its remaining pages instead of failing the whole read.
pub fn hash_tasks(
    tasks: &[ReadTask],
    pfns: &[u64],
    contents: &mut Contents,
    access: &(dyn Fn(u32) -> Result<ProcessFiles> + Sync),
    tolerate_exit: bool,
    check: &(dyn Fn(&str, u64, u64) -> Result<()> + Sync),
) -> Result<ReadStats> {
    debug_assert!(tasks.windows(2).all(|w| w[0].order() < w[1].order()));
    let windows = windows(tasks);
    let total = tasks.len() as u64;
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
                let window = &tasks[w.clone()];
                let read = access(window[0].pid).and_then(|files| {
                    bufs.hash_window(&files, window, pfns, |slot, h| {
                        hashes.write(slot as usize, h);
                        flags_out.write(slot as usize, true);
                    })
                });
                match read {
                    Ok(n) => {
                        hashed.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(ScanError::ProcessGone { .. } | ScanError::NoSuchProcess { .. })
                        if tolerate_exit => {}
                    Err(e) => return Err(e),
                }
                let d =
                    done.fetch_add(window.len() as u64, Ordering::Relaxed) + window.len() as u64;
                check("hash", d, total).inspect_err(|_| stop.store(true, Ordering::Relaxed))
            })?;
    }
    let hashed = hashed.into_inner();
    Ok(ReadStats {
        hashed,
        vanished: total - hashed,
    })
}

/// The reads for one process's pages: each PFN through its first readable page. The
/// kernel zero page is never read (it is known to hold zeros): its slot is filled here.
/// Returns the tasks and how many PFNs could not be read through any mapping.
#[allow(clippy::too_many_arguments)]
pub fn plan_process_reads(
    pid: u32,
    vmas: &[Vma],
    vma_id: &[u32],
    vaddr: &[u64],
    entries: &[PagemapEntry],
    uidx: &[u32],
    flags: &[u64],
    contents: &mut Contents,
) -> (Vec<ReadTask>, u64) {
    let n = flags.len();
    let mut reader = vec![u32::MAX; n];
    let mut zero_pages = 0u64;
    for (i, e) in entries.iter().enumerate() {
        if !e.present() {
            continue;
        }
        let u = uidx[i] as usize;
        if kpageflags::has(flags[u], KPF_ZERO_PAGE) {
            if !contents.hashed[u] {
                contents.hashes[u] = zero_page_hash();
                contents.hashed[u] = true;
                zero_pages += 1;
            }
        } else if reader[u] == u32::MAX && vmas[vma_id[i] as usize].readable() {
            reader[u] = i as u32;
        }
    }
    let mut tasks: Vec<ReadTask> = reader
        .iter()
        .enumerate()
        .filter(|(_, &r)| r != u32::MAX)
        .map(|(u, &r)| ReadTask {
            pid,
            vaddr: vaddr[r as usize],
            slot: u as u32,
        })
        .collect();
    tasks.sort_unstable_by_key(ReadTask::order);
    let unreadable = (n - tasks.len()) as u64 - zero_pages;
    (tasks, unreadable)
}

/// Splits the tasks into windows of at most WINDOW_PAGES pages of one process within
/// WINDOW_SPAN pages of address space.
fn windows(tasks: &[ReadTask]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=tasks.len() {
        let split = i == tasks.len()
            || i - start == WINDOW_PAGES
            || tasks[i].pid != tasks[start].pid
            || tasks[i].vaddr - tasks[start].vaddr >= WINDOW_SPAN * PAGE_SIZE as u64;
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
    /// Copies, re-checks and hashes one window (pages of one process, sorted by address);
    /// calls `emit(slot, hash)` per page read and returns how many were read.
    fn hash_window(
        &mut self,
        files: &ProcessFiles,
        window: &[ReadTask],
        pfns: &[u64],
        mut emit: impl FnMut(u32, PageHash),
    ) -> Result<u64> {
        let pid = window[0].pid;
        self.vaddrs.clear();
        self.vaddrs.extend(window.iter().map(|t| t.vaddr));
        self.data.resize(window.len() * PAGE_SIZE, 0);
        read_pages(
            pid,
            files.mem.as_deref(),
            &self.vaddrs,
            &mut self.data,
            &mut self.ok,
        )?;
        // The mapping may have changed between pagemap and copy: keep only pages whose
        // PFN is still the one whose flags we read.
        let first = self.vaddrs[0];
        let span = ((self.vaddrs[window.len() - 1] - first) / PAGE_SIZE as u64 + 1) as usize;
        files.pagemap.read_range(first, span, &mut self.recheck)?;
        self.kept.clear();
        for (k, t) in window.iter().enumerate() {
            let at = ((t.vaddr - first) / PAGE_SIZE as u64) as usize;
            if self.ok[k] && PagemapEntry(self.recheck[at]).pfn() == Some(pfns[t.slot as usize]) {
                self.kept.push((k, t.slot));
            }
        }
        let data = &self.data;
        let kept: Vec<&[u8]> = self
            .kept
            .iter()
            .map(|&(k, _)| &data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE])
            .collect();
        self.hasher.hash_or_zero(&kept, &mut self.hashes);
        for (&(_, slot), &(h, _)) in self.kept.iter().zip(&self.hashes) {
            emit(slot, h);
        }
        Ok(self.kept.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_respect_size_span_and_process() {
        let task = |pid, page: u64| ReadTask {
            pid,
            vaddr: page * 4096,
            slot: 0,
        };
        let mut tasks: Vec<ReadTask> = (0..200).map(|i| task(1, i)).collect();
        tasks.extend((0..50).map(|i| task(1, i + 5000)));
        tasks.extend((0..50).map(|i| task(2, i + 5050)));
        let w = windows(&tasks);
        assert_eq!(w, vec![0..128, 128..200, 200..250, 250..300]);
    }
}
