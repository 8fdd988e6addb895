//! Pass 1 over the whole host: every process's mapped pages, each distinct PFN with its
//! flags and map count, and hashed once.
//!
//! Pass 1 keeps only per-PFN state (about 60 bytes per mapped PFN), so its memory does not
//! grow with how many processes share a page. The per-process `pages` rows
//! ([`crate::host_pages`]) and the per-PFN `frames` rows ([`crate::host_frames`]) are
//! produced afterwards, a piece at a time, for the caller to stream out.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::bitmap::BitVec;
use crate::error::{Result, ScanError};
use crate::kpageflags::{self, pin_would_unshare, KpageFiles, KPF_ZERO_PAGE};
use crate::maps::{parse_smaps, Vma};
use crate::observer::OwnPages;
use crate::page_hash::{zero_page_hash, PageHash};
use crate::page_table::{Contents, NO_HASH};
use crate::pagemap::{check_pfns_visible, Pagemap};
use crate::parallel::in_pool;
use crate::proc_info::{read_proc_info, ProcInfo};
use crate::process_memory::ProcessPages;
use crate::process_scan::ScanOptions;
use crate::read_and_hash::read_and_hash;
use crate::read_changes::{diff_vmas, read_maps, worth_rechecking, Fingerprint, ReadChanges};
use crate::read_plan::{ReadPlan, ReadTask};
use crate::stages::{check, Progress, StageClock, StageTimes};

/// Processes read in parallel between two merges of their PFNs.
const PROCESS_BATCH: usize = 32;

#[derive(Debug, Clone)]
pub struct HostProcess {
    pub info: ProcInfo,
    /// `/proc/PID/cgroup` as the kernel prints it (one line per hierarchy).
    pub cgroup: String,
    /// Inode of the process's PID namespace (0 if unknown).
    pub pid_ns: u64,
    pub vmas: Vec<Vma>,
    /// Its present pages as pass 1 first read them, and how many in each mapping.
    pub fingerprint: Fingerprint,
    pub vma_present: Vec<u64>,
    /// What changed between that reading and the re-check at the end of pass 1.
    pub changes: ReadChanges,
}

#[derive(Debug, Default, Clone)]
pub struct HostStats {
    pub processes: u64,
    /// Processes that exited before their pages were read.
    pub exited: u64,
    /// Processes whose memory the kernel would not let us read (e.g. a protected init).
    pub denied: u64,
    pub present_pages: u64,
    pub distinct_pfns: u64,
    pub hashed_pfns: u64,
    pub unreadable_pfns: u64,
    pub vanished_pfns: u64,
    /// Distinct PFNs whose map count was lowered by dedupx's own mappings of them.
    pub observer_pfns: u64,
    /// Processes that changed while pass 1 read them (see [`HostProcess::changes`]).
    pub changed_processes: u64,
    pub threads: usize,
    /// Wall-clock milliseconds per stage: pagemap, kpageflags, hash (with map counts).
    pub stage_ms: StageTimes,
}

pub struct HostScan {
    pub proc_root: PathBuf,
    /// /proc/kpageflags and /proc/kpagecount, open for the rows made after pass 1.
    pub kpage: KpageFiles,
    pub processes: Vec<HostProcess>,
    /// Sorted distinct PFNs mapped by any process, and per PFN its flags, map count and
    /// contents as read in pass 1.
    pub pfns: Vec<u64>,
    pub flags: Vec<u64>,
    pub counts: Vec<u64>,
    /// `hashes` may be taken away once pass 1 is done (the binding hands them to Arrow);
    /// `zero` keeps what the rows need to know about them.
    pub contents: Contents,
    /// Per PFN: its content is all zeros.
    pub zero: BitVec,
    /// The pages dedupx maps itself, whose map counts are lowered (see [`crate::observer`]).
    pub own: OwnPages,
    /// Unmapped page-cache pages hashed through files (see
    /// [`crate::host_snapshot::read_cached_files`] and the page-cache walk), sorted by PFN.
    pub file_cache: Vec<(u64, PageHash)>,
    pub stats: HostStats,
}

impl HostScan {
    /// Pass 1's flags, map count and hash slot (`NO_HASH` where its bytes were not read)
    /// of the `s`-th mapped PFN: what every row that names that PFN carries.
    pub(crate) fn mapped_row(&self, s: usize) -> (u64, u64, u32) {
        let slot = if self.contents.hashed[s] {
            s as u32
        } else {
            NO_HASH
        };
        (self.flags[s], self.counts[s], slot)
    }
}

/// A PFN some process maps, and the page through which to read it.
#[derive(Clone, Copy)]
struct Candidate {
    pfn: u64,
    /// False sorts first, so a readable mapping is chosen as the reader when there is one.
    unreadable: bool,
    /// Pagemap's bit 56: the page is mapped once (see `kpageflags::pin_would_unshare`).
    exclusive: bool,
    pid: u32,
    vaddr: u64,
}

impl Candidate {
    fn key(&self) -> (u64, bool, u32, u64) {
        (self.pfn, self.unreadable, self.pid, self.vaddr)
    }
}

/// Pass 1, in a pool of `opts.threads` threads.
pub fn scan_host(opts: &ScanOptions, progress: Progress) -> Result<HostScan> {
    in_pool(opts.threads, || {
        let mut scan = scan_in_pool(opts, progress)?;
        scan.stats.threads = rayon::current_num_threads();
        Ok(scan)
    })?
}

fn scan_in_pool(opts: &ScanOptions, progress: Progress) -> Result<HostScan> {
    let root = opts.proc_root.as_path();
    let kpage = KpageFiles::open(root)?;
    let mut clock = StageClock::start();
    let pids = list_pids(root)?;
    let mut processes = Vec::new();
    let mut cands: Vec<Candidate> = Vec::new();
    let mut compacted = 0usize;
    let mut stats = HostStats::default();
    for (done, batch) in pids.chunks(PROCESS_BATCH).enumerate() {
        check(
            progress,
            "processes",
            (done * PROCESS_BATCH) as u64,
            pids.len() as u64,
        )?;
        let found: Vec<Result<(HostProcess, Vec<Candidate>, u64)>> = batch
            .par_iter()
            .map(|&pid| collect_process(root, pid))
            .collect();
        for f in found {
            match f {
                Ok((p, c, present)) => {
                    processes.push(p);
                    cands.extend(c);
                    stats.present_pages += present;
                }
                Err(ScanError::ProcessGone { .. } | ScanError::NoSuchProcess { .. }) => {
                    stats.exited += 1
                }
                Err(ScanError::PermissionDenied { .. }) => stats.denied += 1,
                Err(e) => return Err(e),
            }
        }
        // Merge now and then, so memory follows distinct PFNs, not mappings.
        if cands.len() > 2 * compacted + (1 << 20) {
            compact(&mut cands);
            compacted = cands.len();
        }
    }
    compact(&mut cands);
    stats.processes = processes.len() as u64;
    check_pfns_visible(
        stats.present_pages,
        cands.iter().map(|c| c.pfn),
        root.join("PID/pagemap"),
    )?;
    let pfns: Vec<u64> = cands.iter().map(|c| c.pfn).collect();
    clock.lap("pagemap");

    check(progress, "kpageflags", 0, pfns.len() as u64)?;
    let flags = kpage.read_flags(&pfns)?;
    clock.lap("kpageflags");

    let mut contents = Contents::unread(pfns.len());
    let mut tasks = Vec::with_capacity(pfns.len());
    let mut unpinned = BitVec::with_capacity(pfns.len());
    for (slot, c) in cands.iter().enumerate() {
        unpinned.push(pin_would_unshare(flags[slot], c.exclusive));
        if kpageflags::has(flags[slot], KPF_ZERO_PAGE) {
            contents.hashes[slot] = zero_page_hash();
            contents.hashed[slot] = true;
        } else if !c.unreadable && opts.hash {
            tasks.push(ReadTask {
                addr: c.vaddr,
                stream: c.pid,
                slot: slot as u32,
            });
        }
    }
    let zero_pages = contents.hashed.iter().filter(|&&h| h).count() as u64;
    // A PFN mapped once has one candidate: its exclusive bit says so.
    let exclusive: BitVec = cands.iter().map(|c| c.exclusive).collect();
    drop(cands);
    let plan = ReadPlan::new(tasks, pfns.len())?;
    let total = plan.len() as u64;
    check(progress, "hash", 0, total)?;
    let read = read_and_hash(
        &ProcessPages::any(root, &pfns, &unpinned),
        &plan,
        &mut contents.hashes,
        &mut contents.hashed,
        &|done| Ok(check(progress, "hash", done, total)?),
    )?;
    // The plan's tasks (16 bytes per PFN) go before the counts (8) come: kept to the end
    // of pass 1, they made its peak (56 of a snapshot's bytes per hashed page at 8 GiB).
    drop(plan);
    let mut counts = kpage.read_counts_unless_exclusive(&pfns, &flags, &exclusive)?;
    drop(exclusive);
    let own = OwnPages::read()?;
    stats.observer_pfns = own.correct(&pfns, &mut counts);
    processes
        .par_iter_mut()
        .map(|p| {
            p.changes = recheck(root, p, &pfns)?;
            Ok(())
        })
        .collect::<Result<()>>()?;
    stats.changed_processes = processes.iter().filter(|p| p.changes.any()).count() as u64;
    stats.distinct_pfns = pfns.len() as u64;
    stats.hashed_pfns = read.hashed + zero_pages;
    stats.vanished_pfns = read.vanished;
    stats.unreadable_pfns = stats.distinct_pfns - zero_pages - total;
    clock.lap("hash");
    stats.stage_ms = clock.finish();
    let zero_hash = zero_page_hash();
    let zero = contents
        .hashes
        .iter()
        .zip(&contents.hashed)
        .map(|(h, &ok)| ok && *h == zero_hash)
        .collect();
    Ok(HostScan {
        proc_root: root.to_path_buf(),
        kpage,
        processes,
        pfns,
        flags,
        counts,
        contents,
        zero,
        own,
        file_cache: Vec::new(),
        stats,
    })
}

fn list_pids(root: &Path) -> Result<Vec<u32>> {
    let me = std::process::id();
    let entries = fs::read_dir(root).map_err(|e| ScanError::Io {
        path: root.to_path_buf(),
        source: e,
    })?;
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| pid != me) // our own memory churns while we scan
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// One process's record and its distinct PFNs (each with its best reader page).
fn collect_process(root: &Path, pid: u32) -> Result<(HostProcess, Vec<Candidate>, u64)> {
    let dir = root.join(pid.to_string());
    let info = read_proc_info(root, pid)?;
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read(&path).map_err(|e| ScanError::from_proc_io(pid, path, e))
    };
    let cgroup = String::from_utf8_lossy(&read("cgroup")?).into_owned();
    let pid_ns = fs::read_link(dir.join("ns/pid"))
        .ok()
        .and_then(|l| {
            let s = l.to_string_lossy().into_owned();
            s.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
        })
        .unwrap_or(0);
    let smaps_path = dir.join("smaps");
    let vmas = parse_smaps(&String::from_utf8_lossy(&read("smaps")?), &smaps_path)?;
    let mut cands = Vec::new();
    let mut present = 0u64;
    let mut fingerprint = Fingerprint::default();
    let mut vma_present = vec![0u64; vmas.len()];
    if !vmas.is_empty() {
        let pagemap = Pagemap::open(root, pid)?;
        for (id, vma) in vmas.iter().enumerate().filter(|(_, v)| v.in_pagemap()) {
            let unreadable = !vma.readable();
            pagemap.for_each_mapped(vma.start, vma.end, |vaddr, e| {
                if let Some(pfn) = e.pfn() {
                    present += 1;
                    vma_present[id] += 1;
                    fingerprint.add(vaddr, pfn);
                    cands.push(Candidate {
                        pfn,
                        unreadable,
                        exclusive: e.exclusive(),
                        pid,
                        vaddr,
                    });
                }
            })?;
        }
    }
    compact(&mut cands);
    Ok((
        HostProcess {
            info,
            cgroup,
            pid_ns,
            vmas,
            fingerprint,
            vma_present,
            changes: ReadChanges::default(),
        },
        cands,
        present,
    ))
}

/// Reads a process's maps and pagemap again at the end of pass 1 and says at least how much
/// differs from its first reading (pass 1 keeps a fingerprint, not every page of every
/// process: see [`Fingerprint`]).
fn recheck(root: &Path, p: &HostProcess, pfns: &[u64]) -> Result<ReadChanges> {
    let pid = p.info.pid;
    let gone = ReadChanges::gone(p.fingerprint.present, p.vmas.len());
    let now = match read_maps(root, pid) {
        Ok(now) => now,
        Err(ScanError::ProcessGone { .. } | ScanError::NoSuchProcess { .. }) => return Ok(gone),
        // Read once already; a re-check the kernel refuses now says nothing either way.
        Err(ScanError::PermissionDenied { .. }) => return Ok(ReadChanges::default()),
        Err(e) => return Err(e),
    };
    let (vmas_appeared, vmas_vanished) = diff_vmas(&p.vmas, &now);
    let mut fp = Fingerprint::default();
    let mut fresh = 0u64;
    if !p.vmas.is_empty() {
        let read = Pagemap::open(root, pid).and_then(|pagemap| {
            let rechecked = p
                .vmas
                .iter()
                .zip(&p.vma_present)
                .filter(|(v, &n)| v.in_pagemap() && worth_rechecking(v, n));
            for (vma, _) in rechecked {
                pagemap.for_each_mapped(vma.start, vma.end, |vaddr, e| {
                    if let Some(pfn) = e.pfn() {
                        fp.add(vaddr, pfn);
                        fresh += u64::from(pfns.binary_search(&pfn).is_err());
                    }
                })?;
            }
            Ok(())
        });
        match read {
            Ok(()) => {}
            Err(ScanError::ProcessGone { .. } | ScanError::NoSuchProcess { .. }) => {
                return Ok(gone)
            }
            Err(ScanError::PermissionDenied { .. }) => return Ok(ReadChanges::default()),
            Err(e) => return Err(e),
        }
    }
    Ok(ReadChanges {
        pages: p.fingerprint.changed_since(&fp, fresh),
        vmas_appeared,
        vmas_vanished,
        exited: false,
    })
}

/// Sorts by PFN and keeps one candidate per PFN, preferring a readable mapping.
fn compact(cands: &mut Vec<Candidate>) {
    cands.par_sort_unstable_by_key(Candidate::key);
    cands.dedup_by_key(|c| c.pfn);
}
