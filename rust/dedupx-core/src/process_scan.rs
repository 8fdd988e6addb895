//! One process, end to end: maps → pagemap → kpageflags/kpagecount → contents → hashes.
//!
//! Flags are read before contents because copying a page can set its REFERENCED bit.
//! Each distinct PFN is read and hashed once, through the first virtual page that maps it.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Result, ScanError};
use crate::kpageflags::{self, KpageFiles};
use crate::maps::{parse_smaps, Vma};
use crate::page_hash::{is_zero, PageHash, PageHasher};
use crate::pagemap::{Pagemap, PagemapEntry};
use crate::proc_info::{read_proc_info, ProcInfo};
use crate::process_memory::read_pages;
use crate::PAGE_SIZE;

/// Pages read by one `process_vm_readv` and hashed while hot in cache.
const WINDOW_PAGES: usize = 128;
/// A window's pages lie within this many pages of address space, so that the pagemap
/// re-check after the copy is one small read.
const WINDOW_SPAN: u64 = 2048;

#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Where procfs is mounted; tests point it elsewhere.
    pub proc_root: PathBuf,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// Skip reading and hashing page contents (metadata only).
    pub hash: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            threads: 0,
            hash: true,
        }
    }
}

/// Called with (stage, done, total); returning false stops the scan with `Interrupted`.
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) -> bool + Sync);

/// One row per mapped virtual page that is present or swapped, columns as vectors.
/// `pfn`, `kpageflags` and `mapcount` mean something only where `present`;
/// `hash` (16 bytes per row, flat so it can become an Arrow buffer as is) and `zero`
/// only where `hashed`.
#[derive(Debug, Default)]
pub struct PageTable {
    pub vma_id: Vec<u32>,
    pub vaddr: Vec<u64>,
    pub pfn: Vec<u64>,
    pub present: Vec<bool>,
    pub swapped: Vec<bool>,
    pub file_shared: Vec<bool>,
    pub exclusive: Vec<bool>,
    pub kpageflags: Vec<u64>,
    pub mapcount: Vec<u64>,
    pub hash: Vec<u8>,
    pub hashed: Vec<bool>,
    pub zero: Vec<bool>,
}

impl PageTable {
    pub fn len(&self) -> usize {
        self.vaddr.len()
    }
    pub fn is_empty(&self) -> bool {
        self.vaddr.is_empty()
    }
}

#[derive(Debug, Default, Clone)]
pub struct ScanStats {
    pub present_pages: u64,
    pub swapped_pages: u64,
    pub distinct_pfns: u64,
    /// Distinct PFNs whose content was hashed (the kernel zero page counts, unread).
    pub hashed_pfns: u64,
    /// Present PFNs only reachable through mappings `process_vm_readv` cannot read.
    pub unreadable_pfns: u64,
    /// PFNs that failed to copy or changed mapping while being read.
    pub vanished_pfns: u64,
    pub threads: usize,
    /// Wall-clock milliseconds per stage: pagemap, kpageflags, hash, assemble.
    pub stage_ms: [u64; 4],
}

#[derive(Debug)]
pub struct ProcessScan {
    pub info: ProcInfo,
    pub vmas: Vec<Vma>,
    pub pages: PageTable,
    pub stats: ScanStats,
}

pub fn scan_process(pid: u32, opts: &ScanOptions, progress: Progress) -> Result<ProcessScan> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| ScanError::Io {
            path: PathBuf::from("thread pool"),
            source: std::io::Error::other(e),
        })?;
    let threads = pool.current_num_threads();
    let mut scan = pool.install(|| scan_in_pool(pid, opts, progress))?;
    scan.stats.threads = threads;
    Ok(scan)
}

fn scan_in_pool(pid: u32, opts: &ScanOptions, progress: Progress) -> Result<ProcessScan> {
    let root = opts.proc_root.as_path();
    let dir = root.join(pid.to_string());
    if let Err(e) = fs::metadata(&dir) {
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) => ScanError::NoSuchProcess { pid },
            _ => ScanError::Io {
                path: dir,
                source: e,
            },
        });
    }
    // Fail early on what only root can read, before any work.
    let kpage = KpageFiles::open(root)?;
    let pagemap = Pagemap::open(root, pid)?;
    let info = read_proc_info(root, pid)?;
    let vmas = read_vmas(root, pid)?;

    let check = |stage: &str, done: u64, total: u64| {
        if progress(stage, done, total) {
            Ok(())
        } else {
            Err(ScanError::Interrupted)
        }
    };
    let total_pages: u64 = vmas.iter().map(Vma::pages).sum();
    check("pagemap", 0, total_pages)?;
    let mut clock = Instant::now();
    let mut lap = || {
        let ms = clock.elapsed().as_millis() as u64;
        clock = Instant::now();
        ms
    };
    let mapped = read_mapped(&pagemap, &vmas)?;
    let pagemap_ms = lap();
    check("pagemap", total_pages, total_pages)?;

    let present_pages = mapped.entries.iter().filter(|e| e.present()).count() as u64;
    if present_pages > 0 && mapped.entries.iter().all(|e| e.pfn().unwrap_or(0) == 0) {
        return Err(ScanError::PfnHidden { path: dir.join("pagemap") });
    }
    let (uniq, uidx) = distinct_pfns(&mapped.entries);
    let mapped = Mapped { uidx, ..mapped };
    check("kpageflags", 0, uniq.len() as u64)?;
    let meta = kpage.read(&uniq)?;
    let kpageflags_ms = lap();
    check("kpageflags", uniq.len() as u64, uniq.len() as u64)?;

    let mut stats = ScanStats {
        present_pages,
        swapped_pages: mapped.entries.iter().filter(|e| e.swapped()).count() as u64,
        distinct_pfns: uniq.len() as u64,
        ..ScanStats::default()
    };
    let contents = if opts.hash {
        hash_contents(
            pid,
            &pagemap,
            &vmas,
            &mapped,
            &uniq,
            &meta.flags,
            &mut stats,
            &check,
        )?
    } else {
        Contents::unread(uniq.len())
    };
    let hash_ms = lap();
    let pages = assemble(mapped, &meta, contents);
    stats.stage_ms = [pagemap_ms, kpageflags_ms, hash_ms, lap()];
    Ok(ProcessScan {
        info,
        vmas,
        pages,
        stats,
    })
}

fn read_vmas(root: &Path, pid: u32) -> Result<Vec<Vma>> {
    let path = root.join(pid.to_string()).join("smaps");
    let bytes = fs::read(&path).map_err(|e| ScanError::from_proc_io(pid, path.clone(), e))?;
    parse_smaps(&String::from_utf8_lossy(&bytes), &path)
}

struct Mapped {
    vma_id: Vec<u32>,
    vaddr: Vec<u64>,
    entries: Vec<PagemapEntry>,
    /// Per page, the index of its PFN in the sorted distinct PFNs (u32::MAX if not present).
    uidx: Vec<u32>,
}

/// Sorted distinct PFNs, and for each page the index of its PFN among them; computed once
/// so that no later stage searches.
fn distinct_pfns(entries: &[PagemapEntry]) -> (Vec<u64>, Vec<u32>) {
    let mut order: Vec<(u64, u32)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.pfn().map(|p| (p, i as u32)))
        .collect();
    order.par_sort_unstable();
    let mut uniq: Vec<u64> = Vec::new();
    let mut uidx = vec![u32::MAX; entries.len()];
    for (pfn, i) in order {
        if uniq.last() != Some(&pfn) {
            uniq.push(pfn);
        }
        uidx[i as usize] = (uniq.len() - 1) as u32;
    }
    (uniq, uidx)
}

fn read_mapped(pagemap: &Pagemap, vmas: &[Vma]) -> Result<Mapped> {
    let per_vma: Vec<Vec<(u64, PagemapEntry)>> = vmas
        .par_iter()
        .map(|vma| {
            let mut found = Vec::new();
            // The legacy vsyscall page lies above the user address space pagemap covers.
            if vma.path == "[vsyscall]" {
                return Ok(found);
            }
            pagemap.for_each_mapped(vma.start, vma.end, |va, e| found.push((va, e)))?;
            Ok(found)
        })
        .collect::<Result<_>>()?;
    let n = per_vma.iter().map(Vec::len).sum();
    let mut mapped = Mapped {
        vma_id: Vec::with_capacity(n),
        vaddr: Vec::with_capacity(n),
        entries: Vec::with_capacity(n),
        uidx: Vec::new(),
    };
    for (id, found) in per_vma.into_iter().enumerate() {
        for (va, e) in found {
            mapped.vma_id.push(id as u32);
            mapped.vaddr.push(va);
            mapped.entries.push(e);
        }
    }
    Ok(mapped)
}

/// Per distinct PFN (same order as `uniq`): its hash, whether it was hashed, whether zero.
struct Contents {
    hash: Vec<PageHash>,
    hashed: Vec<bool>,
    zero: Vec<bool>,
}

impl Contents {
    fn unread(n: usize) -> Self {
        Self {
            hash: vec![[0; 16]; n],
            hashed: vec![false; n],
            zero: vec![false; n],
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn hash_contents(
    pid: u32,
    pagemap: &Pagemap,
    vmas: &[Vma],
    mapped: &Mapped,
    uniq: &[u64],
    flags: &[u64],
    stats: &mut ScanStats,
    check: &(dyn Fn(&str, u64, u64) -> Result<()> + Sync),
) -> Result<Contents> {
    let mut contents = Contents::unread(uniq.len());
    let zero_hash = crate::page_hash::hash_page(&[0u8; PAGE_SIZE]);
    // The first readable virtual page of each PFN reads it; the kernel zero page needs no read.
    let mut reader = vec![u32::MAX; uniq.len()];
    let mut readable_seen = vec![false; uniq.len()];
    for (i, e) in mapped.entries.iter().enumerate() {
        if !e.present() {
            continue;
        }
        let u = mapped.uidx[i] as usize;
        if kpageflags::has(flags[u], kpageflags::KPF_ZERO_PAGE) {
            contents.hash[u] = zero_hash;
            contents.hashed[u] = true;
            contents.zero[u] = true;
            continue;
        }
        if vmas[mapped.vma_id[i] as usize].readable() {
            readable_seen[u] = true;
            if reader[u] == u32::MAX {
                reader[u] = i as u32;
            }
        }
    }
    stats.unreadable_pfns = readable_seen
        .iter()
        .zip(&contents.hashed)
        .filter(|(r, h)| !**r && !**h)
        .count() as u64;
    drop(readable_seen);

    let mut work: Vec<u32> = reader.iter().copied().filter(|&r| r != u32::MAX).collect();
    drop(reader);
    work.sort_unstable();
    let windows = windows(&work, &mapped.vaddr);
    let total = work.len() as u64;
    // Without it, pages under PROT_NONE stay unread; that is all it is needed for.
    let mem = File::open(pagemap.path().with_file_name("mem")).ok();
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    check("hash", 0, total)?;

    let results: Vec<Vec<(u32, PageHash, bool)>> = windows
        .par_iter()
        .map_init(WindowBuffers::default, |bufs, w| {
            if stop.load(Ordering::Relaxed) {
                return Err(ScanError::Interrupted);
            }
            let idx = &work[w.clone()];
            let out = bufs.hash_window(pid, mem.as_ref(), pagemap, mapped, idx)?;
            let d = done.fetch_add(idx.len() as u64, Ordering::Relaxed) + idx.len() as u64;
            if let Err(e) = check("hash", d, total) {
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
            Ok(out)
        })
        .collect::<Result<_>>()?;
    for window in results {
        for (u, h, z) in window {
            contents.hash[u as usize] = h;
            contents.hashed[u as usize] = true;
            contents.zero[u as usize] = z;
        }
    }
    stats.hashed_pfns = contents.hashed.iter().filter(|&&h| h).count() as u64;
    stats.vanished_pfns = total - (stats.hashed_pfns - contents.zero_page_count(uniq, flags));
    Ok(contents)
}

impl Contents {
    fn zero_page_count(&self, uniq: &[u64], flags: &[u64]) -> u64 {
        (0..uniq.len())
            .filter(|&u| kpageflags::has(flags[u], kpageflags::KPF_ZERO_PAGE))
            .count() as u64
    }
}

/// Splits the sorted page indices into windows of at most WINDOW_PAGES within WINDOW_SPAN.
fn windows(work: &[u32], vaddr: &[u64]) -> Vec<std::ops::Range<usize>> {
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

#[derive(Default)]
struct WindowBuffers {
    hasher: PageHasher,
    data: Vec<u8>,
    ok: Vec<bool>,
    vaddrs: Vec<u64>,
    recheck: Vec<u64>,
    to_hash: Vec<usize>,
    hashes: Vec<PageHash>,
}

impl WindowBuffers {
    /// Copies, re-checks and hashes one window; returns (pfn index, hash, zero) per page read.
    fn hash_window(
        &mut self,
        pid: u32,
        mem: Option<&File>,
        pagemap: &Pagemap,
        mapped: &Mapped,
        idx: &[u32],
    ) -> Result<Vec<(u32, PageHash, bool)>> {
        self.vaddrs.clear();
        self.vaddrs
            .extend(idx.iter().map(|&i| mapped.vaddr[i as usize]));
        self.data.resize(idx.len() * PAGE_SIZE, 0);
        read_pages(pid, mem, &self.vaddrs, &mut self.data, &mut self.ok)?;
        // The mapping may have changed between pagemap and copy: keep only pages whose
        // PFN is still the one we looked up the flags for.
        let first = self.vaddrs[0];
        let span = ((self.vaddrs[idx.len() - 1] - first) / PAGE_SIZE as u64 + 1) as usize;
        pagemap.read_range(first, span, &mut self.recheck)?;
        let mut out = Vec::with_capacity(idx.len());
        self.to_hash.clear();
        for (k, &i) in idx.iter().enumerate() {
            if !self.ok[k] {
                continue;
            }
            let before = mapped.entries[i as usize].pfn();
            let now =
                PagemapEntry(self.recheck[((self.vaddrs[k] - first) / PAGE_SIZE as u64) as usize]);
            if now.pfn() != before {
                continue;
            }
            let page = &self.data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE];
            let u = mapped.uidx[i as usize];
            if is_zero(page) {
                out.push((u, crate::page_hash::hash_page(page), true));
            } else {
                self.to_hash.push(k);
                out.push((u, [0; 16], false));
            }
        }
        let pages: Vec<&[u8]> = self
            .to_hash
            .iter()
            .map(|&k| &self.data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE])
            .collect();
        self.hashes.resize(pages.len(), [0; 16]);
        self.hasher.hash_pages(&pages, &mut self.hashes);
        let mut next = self.hashes.iter();
        for row in out.iter_mut().filter(|r| !r.2) {
            row.1 = *next.next().expect("one hash per non-zero page");
        }
        Ok(out)
    }
}

fn assemble(
    mapped: Mapped,
    meta: &kpageflags::PageMeta,
    contents: Contents,
) -> PageTable {
    let n = mapped.entries.len();
    let mut t = PageTable {
        vma_id: mapped.vma_id,
        vaddr: mapped.vaddr,
        pfn: Vec::with_capacity(n),
        present: Vec::with_capacity(n),
        swapped: Vec::with_capacity(n),
        file_shared: Vec::with_capacity(n),
        exclusive: Vec::with_capacity(n),
        kpageflags: Vec::with_capacity(n),
        mapcount: Vec::with_capacity(n),
        hash: Vec::with_capacity(n * 16),
        hashed: Vec::with_capacity(n),
        zero: Vec::with_capacity(n),
    };
    for (e, u) in mapped.entries.into_iter().zip(mapped.uidx) {
        t.present.push(e.present());
        t.swapped.push(e.swapped());
        t.file_shared.push(e.file_shared());
        t.exclusive.push(e.exclusive());
        match e.pfn() {
            Some(pfn) => {
                let u = u as usize;
                t.pfn.push(pfn);
                t.kpageflags.push(meta.flags[u]);
                t.mapcount.push(meta.count[u]);
                t.hash.extend_from_slice(&contents.hash[u]);
                t.hashed.push(contents.hashed[u]);
                t.zero.push(contents.zero[u]);
            }
            None => {
                t.pfn.push(0);
                t.kpageflags.push(0);
                t.mapcount.push(0);
                t.hash.extend_from_slice(&[0; 16]);
                t.hashed.push(false);
                t.zero.push(false);
            }
        }
    }
    t
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
