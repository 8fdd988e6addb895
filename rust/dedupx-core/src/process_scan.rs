//! One process, end to end: maps → pagemap → kpageflags/kpagecount → contents → hashes.
//!
//! Flags are read before contents because copying a page can set its REFERENCED bit.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::bitmap::BitVec;
use crate::error::{Result, ScanError};
use crate::kpageflags::{
    self, pin_would_unshare, KpageFiles, KPF_ANON, KPF_SWAPBACKED, KPF_ZERO_PAGE,
};
use crate::maps::{parse_smaps, Vma};
use crate::observer::OwnPages;
use crate::page_hash::zero_page_hash;
use crate::page_table::{Contents, FrameColumns, FrameValues, PageRows, PageTable};
use crate::pagemap::{check_pfns_visible, Pagemap, PagemapEntry};
use crate::parallel::{in_pool, return_freed_memory};
use crate::proc_info::{read_proc_info, ProcInfo};
use crate::process_memory::{ProcessFiles, ProcessPages};
use crate::read_and_hash::read_and_hash;
use crate::read_changes::{
    changed_pages, diff_vmas, read_maps, same_mappings, FirstFrames, ReadChanges,
};
use crate::read_plan::{ReadPlan, ReadTask};
use crate::stages::{check, Progress, StageClock, StageTimes};
use crate::swap_area::{key_slot, slot_key, SwapAreas};

#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Where procfs is mounted; tests and containers point it elsewhere.
    pub proc_root: PathBuf,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// Read and hash page contents (false: metadata only).
    pub hash: bool,
    /// Where sysfs is mounted (zswap's state is read there).
    pub sys_root: PathBuf,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            threads: 0,
            hash: true,
            sys_root: PathBuf::from("/sys"),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct ScanStats {
    pub present_pages: u64,
    pub swapped_pages: u64,
    pub distinct_pfns: u64,
    /// Distinct PFNs whose content was hashed (the kernel zero page counts, unread).
    pub hashed_pfns: u64,
    /// Present PFNs only reachable through mappings that cannot be copied (I/O, PFN maps).
    pub unreadable_pfns: u64,
    /// PFNs that failed to copy or changed mapping while being read.
    pub vanished_pfns: u64,
    /// Distinct swap slots the swapped pages are in, and those hashed from the swap area.
    pub swap_slots: u64,
    pub swap_hashed: u64,
    /// Why swapped pages were not read, if they were not (zswap, an unreadable area).
    pub swap_unread_reason: Option<String>,
    /// Distinct PFNs whose map count was lowered by dedupx's own mappings of them
    /// (see [`crate::observer`]).
    pub observer_pfns: u64,
    /// What changed in the process between the first reading and the re-check after the last.
    pub changes: ReadChanges,
    pub threads: usize,
    /// Wall-clock milliseconds per stage: pagemap (with maps and smaps), kpageflags, plan,
    /// hash, recheck (with swapped pages, map counts, and the table built meanwhile).
    pub stage_ms: StageTimes,
}

#[derive(Debug)]
pub struct ProcessScan {
    pub info: ProcInfo,
    pub vmas: Vec<Vma>,
    pub pages: PageTable,
    pub stats: ScanStats,
}

pub fn scan_process(pid: u32, opts: &ScanOptions, progress: Progress) -> Result<ProcessScan> {
    in_pool(opts.threads, || {
        let mut scan = scan_in_pool(pid, opts, progress)?;
        scan.stats.threads = rayon::current_num_threads();
        Ok(scan)
    })?
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

    let mut clock = StageClock::start();
    // smaps walks every page table of the process in one thread (21 ms of a 1 GiB scan's
    // 370): it is read while the other threads read the pagemap of the mappings that
    // `maps` lists without that walk. Should the two listings differ (the process mapped
    // or unmapped in between), the pagemap is read again for smaps' mappings.
    let maps = read_maps(root, pid).unwrap_or_default();
    let total_pages: u64 = maps.iter().map(Vma::pages).sum();
    check(progress, "pagemap", 0, total_pages)?;
    let (vmas, mapped) = rayon::join(|| read_vmas(root, pid), || read_mapped(&pagemap, &maps));
    let vmas = vmas?;
    let (vma_id, vaddr, entries) = if same_mappings(&maps, &vmas) {
        mapped?
    } else {
        read_mapped(&pagemap, &vmas)?
    };
    drop(maps);
    check(progress, "pagemap", total_pages, total_pages)?;
    let present_pages = entries.iter().filter(|e| e.present()).count() as u64;
    check_pfns_visible(
        present_pages,
        entries.iter().map(|e| e.pfn().unwrap_or(0)),
        dir.join("pagemap"),
    )?;
    let (uniq, mut uidx) = distinct_pfns(&entries);
    return_freed_memory();
    clock.lap("pagemap");

    check(progress, "kpageflags", 0, uniq.len() as u64)?;
    let flags = kpage.read_flags(&uniq)?;
    check(progress, "kpageflags", uniq.len() as u64, uniq.len() as u64)?;
    clock.lap("kpageflags");

    let mut stats = ScanStats {
        present_pages,
        swapped_pages: entries.iter().filter(|e| e.swapped()).count() as u64,
        distinct_pfns: uniq.len() as u64,
        ..ScanStats::default()
    };
    let mut contents = Contents::unread(flags.len());
    // Of present frames only: made before swapped pages get their slots past them.
    let mut exclusive = BitVec::zeros(uniq.len());
    for (e, &u) in entries.iter().zip(&uidx) {
        if u != u32::MAX && e.exclusive() {
            exclusive.replace(u as usize, true);
        }
    }
    if opts.hash {
        let (tasks, unreadable, unpinned) = plan_reads(
            pid,
            &vmas,
            &vma_id,
            &vaddr,
            &entries,
            &uidx,
            &flags,
            &mut contents,
        );
        let zero_pages = contents.hashed.iter().filter(|&&h| h).count() as u64;
        let plan = ReadPlan::new(tasks, uniq.len())?;
        let source = ProcessPages::one(ProcessFiles::open(root, pid)?, &uniq, &unpinned);
        let total = plan.len() as u64;
        clock.lap("plan");
        check(progress, "hash", 0, total)?;
        let read = read_and_hash(
            &source,
            &plan,
            &mut contents.hashes,
            &mut contents.hashed,
            &|done| Ok(check(progress, "hash", done, total)?),
        )?;
        stats.hashed_pfns = read.hashed + zero_pages;
        stats.unreadable_pfns = unreadable;
        stats.vanished_pfns = read.vanished;
    }
    clock.lap("hash");
    let swap = read_swapped(opts, &entries, progress)?;
    stats.swap_slots = swap.keys.len() as u64;
    stats.swap_hashed = swap.contents.hashed.iter().filter(|&&h| h).count() as u64;
    stats.swap_unread_reason = swap.unread_reason;
    let present_slots = uniq.len() as u32;
    for &(i, j) in &swap.pages {
        uidx[i as usize] = present_slots + j;
    }
    // Map counts do not change when a page is copied, so they are read now, while another
    // thread turns the pagemap entries into the table's rows.
    let (counts, rows) = rayon::join(
        || kpage.read_counts_unless_exclusive(&uniq, &flags, &exclusive),
        || PageRows::from_entries(entries, &uidx, uniq.len(), &swap.keys),
    );
    let mut counts = counts?;
    drop(exclusive);
    // Counted as if dedupx were not running, unless dedupx is what is scanned.
    if pid != std::process::id() {
        stats.observer_pfns = OwnPages::read()?.correct(&uniq, &mut counts);
    }
    drop(uniq);
    let mut flags = flags;
    // Swap slots are frames after the present PFNs: a swapped page is private anon.
    flags.extend(std::iter::repeat_n(
        (1u64 << KPF_ANON) | (1u64 << KPF_SWAPBACKED),
        swap.keys.len(),
    ));
    counts.extend(&swap.refs);
    contents.hashes.extend(swap.contents.hashes);
    contents.hashed.extend(swap.contents.hashed);
    let frames = FrameColumns {
        flags,
        counts,
        contents,
    };
    // The page tables are read again while another thread spreads the frames' columns
    // over the pages.
    let (changes, values) = rayon::join(
        || {
            let first = |k: usize| rows.present_pfn(k);
            let first_reading = (vma_id.as_slice(), vaddr.as_slice(), &first as FirstFrames);
            recheck(root, pid, &pagemap, &vmas, first_reading, present_pages)
        },
        || FrameValues::spread(uidx, frames),
    );
    stats.changes = changes?;
    let pages = PageTable::new(vma_id, vaddr, rows, values);
    clock.lap("recheck");
    stats.stage_ms = clock.finish();
    Ok(ProcessScan {
        info,
        vmas,
        pages,
        stats,
    })
}

/// Reads the process's maps and pagemap again, once everything else is read, and says how
/// much differs from the first reading (each page's mapping, address and PFN; `present` of
/// its pages had one): a scan of a process that changed meanwhile is flagged, not silently
/// mixed from two moments.
fn recheck(
    root: &Path,
    pid: u32,
    pagemap: &Pagemap,
    vmas: &[Vma],
    first_reading: (&[u32], &[u64], FirstFrames),
    present: u64,
) -> Result<ReadChanges> {
    let (vma_id, vaddr, first) = first_reading;
    let gone = |e: &ScanError| {
        matches!(
            e,
            ScanError::ProcessGone { .. } | ScanError::NoSuchProcess { .. }
        )
    };
    let now = match read_maps(root, pid) {
        Ok(now) => now,
        Err(e) if gone(&e) => return Ok(ReadChanges::gone(present, vmas.len())),
        Err(e) => return Err(e),
    };
    let (vmas_appeared, vmas_vanished) = diff_vmas(vmas, &now);
    let pages = match changed_pages(pagemap, vmas, vma_id, vaddr, first) {
        Ok(n) => n,
        Err(e) if gone(&e) => return Ok(ReadChanges::gone(present, vmas.len())),
        Err(e) => return Err(e),
    };
    Ok(ReadChanges {
        pages,
        vmas_appeared,
        vmas_vanished,
        exited: false,
    })
}

/// The swapped pages' slots, read from the swap areas (when hashing).
struct SwapRead {
    /// Distinct slot keys (`swap_area::slot_key`), sorted.
    keys: Vec<u64>,
    /// Per slot, the pages of this process in it.
    refs: Vec<u64>,
    /// (page index, slot index) of each swapped page that has a slot.
    pages: Vec<(u32, u32)>,
    contents: Contents,
    unread_reason: Option<String>,
}

fn read_swapped(
    opts: &ScanOptions,
    entries: &[PagemapEntry],
    progress: Progress,
) -> Result<SwapRead> {
    let mut found: Vec<(u64, u32)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let (t, off) = e.swap_slot()?;
            Some((slot_key(t, off)?, i as u32))
        })
        .collect();
    let mut out = SwapRead {
        keys: Vec::new(),
        refs: Vec::new(),
        pages: Vec::with_capacity(found.len()),
        contents: Contents::unread(0),
        unread_reason: None,
    };
    if found.is_empty() {
        return Ok(out);
    }
    found.sort_unstable();
    for &(key, i) in &found {
        if out.keys.last() != Some(&key) {
            out.keys.push(key);
            out.refs.push(0);
        }
        *out.refs.last_mut().expect("pushed") += 1;
        out.pages.push((i, (out.keys.len() - 1) as u32));
    }
    out.contents = Contents::unread(out.keys.len());
    if !opts.hash {
        return Ok(out);
    }
    let areas = SwapAreas::open(&opts.proc_root, &opts.sys_root);
    let tasks: Vec<ReadTask> = out
        .keys
        .iter()
        .enumerate()
        .filter_map(|(j, &key)| {
            let (t, off) = key_slot(key);
            areas.readable(t, off).then_some(ReadTask {
                stream: t,
                addr: off * crate::PAGE_SIZE as u64,
                slot: j as u32,
            })
        })
        .collect();
    if tasks.len() < out.keys.len() {
        out.unread_reason = Some(
            areas
                .areas
                .iter()
                .find_map(|a| a.unreadable.clone())
                .unwrap_or_else(|| "their swap area is not listed in /proc/swaps".into()),
        );
    }
    let plan = ReadPlan::new(tasks, out.keys.len())?;
    let total = plan.len() as u64;
    check(progress, "swap", 0, total)?;
    read_and_hash(
        &areas,
        &plan,
        &mut out.contents.hashes,
        &mut out.contents.hashed,
        &|done| Ok(check(progress, "swap", done, total)?),
    )?;
    Ok(out)
}

fn read_vmas(root: &Path, pid: u32) -> Result<Vec<Vma>> {
    let path = root.join(pid.to_string()).join("smaps");
    let bytes = fs::read(&path).map_err(|e| ScanError::from_proc_io(pid, path.clone(), e))?;
    parse_smaps(&String::from_utf8_lossy(&bytes), &path)
}

type Mapped = (Vec<u32>, Vec<u64>, Vec<PagemapEntry>);

/// Pages of pagemap one thread reads at a time: a 1 GiB mapping is read by every thread,
/// not by one while the others wait.
pub const PIECE_PAGES: u64 = 4096;

/// Every present or swapped page: (vma index, address, pagemap entry), in address order.
fn read_mapped(pagemap: &Pagemap, vmas: &[Vma]) -> Result<Mapped> {
    let pieces: Vec<(u32, u64, u64)> = vmas
        .par_iter()
        .enumerate()
        .filter(|(_, vma)| vma.in_pagemap())
        .flat_map_iter(|(id, vma)| {
            pagemap
                .pieces(vma.start, vma.end, PIECE_PAGES)
                .into_iter()
                .map(move |(a, b)| (id as u32, a, b))
        })
        .collect();
    let per_piece: Vec<Vec<(u64, PagemapEntry)>> = pieces
        .par_iter()
        .map(|&(_, a, b)| {
            let mut found = Vec::new();
            pagemap.for_each_mapped(a, b, |va, e| found.push((va, e)))?;
            Ok(found)
        })
        .collect::<Result<_>>()?;
    let n = per_piece.iter().map(Vec::len).sum();
    let mut out: Mapped = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (&(id, _, _), found) in pieces.iter().zip(per_piece) {
        for (va, e) in found {
            out.0.push(id);
            out.1.push(va);
            out.2.push(e);
        }
    }
    Ok(out)
}

/// Sorted distinct PFNs, and for each page the index of its PFN among them (u32::MAX if
/// not present); computed once so that no later stage searches.
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

/// The reads for one process's pages: each PFN through its first readable page. The
/// kernel zero page is never read (it is known to hold zeros): its slot is filled here.
/// Returns the tasks, how many PFNs could not be read through any mapping, and the slots
/// to read without pinning (`kpageflags::pin_would_unshare`).
///
/// `entries` are in address order, so the tasks come out sorted as they are found: one
/// pass with a bit per PFN, no per-PFN reader table and no sort (this took 23 ms of a
/// 1 GiB scan's 460 when it kept both).
#[allow(clippy::too_many_arguments)]
fn plan_reads(
    pid: u32,
    vmas: &[Vma],
    vma_id: &[u32],
    vaddr: &[u64],
    entries: &[PagemapEntry],
    uidx: &[u32],
    flags: &[u64],
    contents: &mut Contents,
) -> (Vec<ReadTask>, u64, BitVec) {
    let n = flags.len();
    // Asked once per mapping, not once per page (it compares flag names).
    let readable: Vec<bool> = vmas.iter().map(Vma::readable).collect();
    let mut planned = BitVec::zeros(n);
    let mut unpinned = BitVec::zeros(n);
    let mut tasks = Vec::with_capacity(n);
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
        } else if !planned.get(u) && readable[vma_id[i] as usize] {
            planned.replace(u, true);
            unpinned.replace(u, pin_would_unshare(flags[u], e.exclusive()));
            tasks.push(ReadTask {
                stream: pid,
                addr: vaddr[i],
                slot: u as u32,
            });
        }
    }
    debug_assert!(tasks.is_sorted_by_key(|t| t.addr));
    let unreadable = (n - tasks.len()) as u64 - zero_pages;
    (tasks, unreadable, unpinned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_pfns_index_every_present_page() {
        let present = |pfn: u64| PagemapEntry((1u64 << 63) | pfn);
        let entries = vec![present(9), PagemapEntry(1u64 << 62), present(3), present(9)];
        let (uniq, uidx) = distinct_pfns(&entries);
        assert_eq!(uniq, vec![3, 9]);
        assert_eq!(uidx, vec![1, u32::MAX, 0, 1]);
    }
}
