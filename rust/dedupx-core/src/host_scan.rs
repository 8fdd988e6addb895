//! The whole host: every process's mapped pages, each distinct PFN hashed once, then every
//! PFN of System RAM with its flags, and a hash wherever its bytes can be read.
//!
//! Pass 1 ([`scan_host`]) keeps only per-PFN state (about 60 bytes per mapped PFN), so its
//! memory does not grow with how many processes share a page. The per-process `pages` rows
//! ([`HostScan::process_pages`]) and the per-PFN `frames` rows ([`HostScan::frames_chunk`])
//! are produced afterwards, a piece at a time, for the caller to stream out.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::bitmap::BitVec;
use crate::error::{Result, ScanError};
use crate::kpageflags::{self, KpageFiles, KPF_ZERO_PAGE};
use crate::maps::{parse_smaps, Vma};
use crate::page_contents::{hash_tasks, ProcessFiles, ReadTask};
use crate::page_hash::{zero_page_hash, PageHash, PageHasher};
use crate::page_table::{Contents, PageTable, NO_HASH};
use crate::pagemap::Pagemap;
use crate::parallel::in_pool;
use crate::phys_image::PhysImage;
use crate::proc_info::{read_proc_info, ProcInfo};
use crate::process_scan::ScanOptions;

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
    pub threads: usize,
    pub stage_ms: [u64; 3],
}

pub struct HostScan {
    pub proc_root: PathBuf,
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
    /// Unmapped page-cache pages hashed through files (see [`HostScan::add_cached_files`]),
    /// sorted by PFN.
    pub file_cache: Vec<(u64, PageHash)>,
    pub stats: HostStats,
}

/// A PFN some process maps, and the page through which to read it.
#[derive(Clone, Copy)]
struct Candidate {
    pfn: u64,
    /// False sorts first, so a readable mapping is chosen as the reader when there is one.
    unreadable: bool,
    pid: u32,
    vaddr: u64,
}

impl Candidate {
    fn key(&self) -> (u64, bool, u32, u64) {
        (self.pfn, self.unreadable, self.pid, self.vaddr)
    }
}

pub fn scan_host(
    opts: &ScanOptions,
    progress: &(dyn Fn(&str, u64, u64) -> bool + Sync),
) -> Result<HostScan> {
    in_pool(opts.threads, || {
        let mut scan = scan_in_pool(opts, progress)?;
        scan.stats.threads = rayon::current_num_threads();
        Ok(scan)
    })
    .map_err(|source| ScanError::Io {
        path: PathBuf::from("thread pool"),
        source,
    })?
}

fn scan_in_pool(
    opts: &ScanOptions,
    progress: &(dyn Fn(&str, u64, u64) -> bool + Sync),
) -> Result<HostScan> {
    let root = opts.proc_root.as_path();
    let check = |stage: &str, done: u64, total: u64| {
        if progress(stage, done, total) {
            Ok(())
        } else {
            Err(ScanError::Interrupted)
        }
    };
    let kpage = KpageFiles::open(root)?;
    let mut clock = Instant::now();
    let mut lap = || {
        let ms = clock.elapsed().as_millis() as u64;
        clock = Instant::now();
        ms
    };
    let pids = list_pids(root)?;
    let mut processes = Vec::new();
    let mut cands: Vec<Candidate> = Vec::new();
    let mut compacted = 0usize;
    let mut stats = HostStats::default();
    for (done, batch) in pids.chunks(PROCESS_BATCH).enumerate() {
        check(
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
    if stats.present_pages > 0 && cands.iter().all(|c| c.pfn == 0) {
        return Err(ScanError::PfnHidden {
            path: root.join("PID/pagemap"),
        });
    }
    let pfns: Vec<u64> = cands.iter().map(|c| c.pfn).collect();
    let pagemap_ms = lap();

    check("kpageflags", 0, pfns.len() as u64)?;
    let flags = kpage.read_flags(&pfns)?;
    let kpageflags_ms = lap();

    let mut contents = Contents::unread(pfns.len());
    let mut tasks = Vec::with_capacity(pfns.len());
    for (slot, c) in cands.iter().enumerate() {
        if kpageflags::has(flags[slot], KPF_ZERO_PAGE) {
            contents.hashes[slot] = zero_page_hash();
            contents.hashed[slot] = true;
        } else if !c.unreadable && opts.hash {
            tasks.push(ReadTask {
                vaddr: c.vaddr,
                pid: c.pid,
                slot: slot as u32,
            });
        }
    }
    let zero_pages = contents.hashed.iter().filter(|&&h| h).count() as u64;
    drop(cands);
    tasks.sort_unstable_by_key(|t| (t.pid, t.vaddr));
    let access = |pid| ProcessFiles::open(root, pid);
    let read = hash_tasks(&tasks, &pfns, &mut contents, &access, true, &check)?;
    let counts = kpage.read_counts(&pfns)?;
    stats.distinct_pfns = pfns.len() as u64;
    stats.hashed_pfns = read.hashed + zero_pages;
    stats.vanished_pfns = read.vanished;
    stats.unreadable_pfns = stats.distinct_pfns - zero_pages - tasks.len() as u64;
    stats.stage_ms = [pagemap_ms, kpageflags_ms, lap()];
    let zero_hash = zero_page_hash();
    let zero = contents
        .hashes
        .iter()
        .zip(&contents.hashed)
        .map(|(h, &ok)| ok && *h == zero_hash)
        .collect();
    Ok(HostScan {
        proc_root: root.to_path_buf(),
        processes,
        pfns,
        flags,
        counts,
        contents,
        zero,
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
    if !vmas.is_empty() {
        let pagemap = Pagemap::open(root, pid)?;
        for vma in vmas.iter().filter(|v| v.path != "[vsyscall]") {
            let unreadable = !vma.readable();
            pagemap.for_each_mapped(vma.start, vma.end, |vaddr, e| {
                if let Some(pfn) = e.pfn() {
                    present += 1;
                    cands.push(Candidate {
                        pfn,
                        unreadable,
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
        },
        cands,
        present,
    ))
}

/// Sorts by PFN and keeps one candidate per PFN, preferring a readable mapping.
fn compact(cands: &mut Vec<Candidate>) {
    cands.par_sort_unstable_by_key(Candidate::key);
    cands.dedup_by_key(|c| c.pfn);
}

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

/// Per file asked to cover: (cached pages, pages), or why it could not be read.
pub type CachedFileReport = (PathBuf, std::result::Result<(u64, u64), String>);

/// Marks a hash slot as an index into `FrameChunk::local_hashes`.
pub const LOCAL: u32 = 1 << 31;

impl HostScan {
    /// Hashes the cached pages of `files` that no process maps (their PFNs are otherwise
    /// invisible without /proc/kcore). Returns per file its cached and total pages, or why
    /// it could not be read.
    pub fn add_cached_files(&mut self, files: &[PathBuf]) -> Vec<CachedFileReport> {
        let mut report = Vec::new();
        for path in files {
            match crate::file_cache::cached_pages(path, &self.proc_root) {
                Ok(c) => {
                    report.push((path.clone(), Ok((c.pages.len() as u64, c.file_pages))));
                    let mapped = &self.pfns;
                    self.file_cache.extend(
                        c.pages
                            .iter()
                            .filter(|(_, pfn, _)| mapped.binary_search(pfn).is_err())
                            .map(|&(_, pfn, h)| (pfn, h)),
                    );
                }
                Err(e) => report.push((path.clone(), Err(e.to_string()))),
            }
        }
        self.file_cache.sort_unstable_by_key(|&(pfn, _)| pfn);
        self.file_cache.dedup_by_key(|e| e.0);
        report
    }

    /// Address windows that split a process's mappings into pieces of at most `max_pages`
    /// virtual pages, so that its `pages` rows can be produced a piece at a time.
    pub fn page_windows(p: &HostProcess, max_pages: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut used = 0;
        for vma in p.vmas.iter().filter(|v| v.path != "[vsyscall]") {
            let mut start = vma.start;
            while start < vma.end {
                let room = max_pages - used;
                let end = vma.end.min(start + room * crate::PAGE_SIZE as u64);
                match out.last_mut() {
                    Some(last) if used > 0 => last.1 = end,
                    _ => out.push((start, end)),
                }
                used += (end - start) / crate::PAGE_SIZE as u64;
                if used >= max_pages {
                    used = 0;
                }
                start = end;
            }
        }
        out
    }

    /// The `pages` rows of one process within `[start, end)`: its pagemap read again, each
    /// row with its PFN's pass-1 flags, count and hash. PFNs it maps now that pass 1 did
    /// not see get fresh flags and counts and no hash.
    pub fn process_pages(
        &self,
        kpage: &KpageFiles,
        p: &HostProcess,
        start: u64,
        end: u64,
    ) -> Result<PageTable> {
        let pid = p.info.pid;
        let mut vma_id = Vec::new();
        let mut vaddr = Vec::new();
        let mut entries = Vec::new();
        if !p.vmas.is_empty() {
            let pagemap = Pagemap::open(&self.proc_root, pid)?;
            for (id, vma) in p
                .vmas
                .iter()
                .enumerate()
                .filter(|(_, v)| v.path != "[vsyscall]" && v.end > start && v.start < end)
            {
                pagemap.for_each_mapped(vma.start.max(start), vma.end.min(end), |va, e| {
                    vma_id.push(id as u32);
                    vaddr.push(va);
                    entries.push(e);
                })?;
            }
        }
        // Each row's PFN looked up once among pass 1's PFNs.
        let slots: Vec<Option<usize>> = entries
            .iter()
            .map(|e| e.pfn().and_then(|pfn| self.pfns.binary_search(&pfn).ok()))
            .collect();
        let mut fresh: Vec<u64> = entries
            .iter()
            .zip(&slots)
            .filter(|(_, s)| s.is_none())
            .filter_map(|(e, _)| e.pfn())
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        let fresh_flags = kpage.read_flags(&fresh)?;
        let fresh_counts = kpage.read_counts(&fresh)?;
        let n = entries.len();
        let mut t = PageTable {
            pfn: Vec::with_capacity(n),
            kpageflags: Vec::with_capacity(n),
            mapcount: Vec::with_capacity(n),
            hash_slot: Vec::with_capacity(n),
            ..PageTable::default()
        };
        for (row, e) in entries.iter().enumerate() {
            t.present.push(e.present());
            t.swapped.push(e.swapped());
            t.file_shared.push(e.file_shared());
            t.exclusive.push(e.exclusive());
            t.pfn.push(e.pfn().unwrap_or(0));
            let (f, c, slot) = match (e.pfn(), slots[row]) {
                (_, Some(s)) => (
                    self.flags[s],
                    self.counts[s],
                    if self.contents.hashed[s] {
                        s as u32
                    } else {
                        NO_HASH
                    },
                ),
                (Some(pfn), None) => {
                    let i = fresh.binary_search(&pfn).unwrap_or(0);
                    (
                        fresh_flags.get(i).copied().unwrap_or(0),
                        fresh_counts.get(i).copied().unwrap_or(0),
                        NO_HASH,
                    )
                }
                (None, None) => (0, 0, NO_HASH),
            };
            t.kpageflags.push(f);
            t.mapcount.push(c);
            t.hash_slot.push(slot);
            t.zero.push(slot != NO_HASH && self.zero.get(slot as usize));
        }
        t.vma_id = vma_id;
        t.vaddr = vaddr;
        Ok(t)
    }

    /// Frames for PFNs `[start, end)` (which lie in System RAM): flags and counts of the
    /// PFNs no process maps are read now, those of mapped PFNs are pass 1's; unmapped
    /// pages are hashed from `phys` when there is one (flags first, then contents).
    pub fn frames_chunk(
        &self,
        kpage: &KpageFiles,
        start: u64,
        end: u64,
        phys: Option<&PhysImage>,
    ) -> Result<FrameChunk> {
        let pfns: Vec<u64> = (start..end).collect();
        let flags = kpage.read_flags(&pfns)?;
        let counts = kpage.read_counts(&pfns)?;
        let first = self.pfns.partition_point(|&p| p < start);
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
        for (i, &pfn) in pfns.iter().enumerate() {
            let mapped = self.pfns.get(next) == Some(&pfn);
            let (f, cnt, slot) = if mapped {
                let s = next;
                next += 1;
                (
                    self.flags[s],
                    self.counts[s],
                    if self.contents.hashed[s] {
                        s as u32
                    } else {
                        NO_HASH
                    },
                )
            } else if kpageflags::has(flags[i], KPF_ZERO_PAGE) {
                (flags[i], counts[i], NO_HASH)
            } else if let Ok(k) = self.file_cache.binary_search_by_key(&pfn, |e| e.0) {
                let local = (c.local_hashes.len() / 16) as u32;
                c.local_hashes.extend_from_slice(&self.file_cache[k].1);
                (flags[i], counts[i], LOCAL | local)
            } else {
                if phys.is_some() {
                    to_read.push(i);
                }
                (flags[i], counts[i], NO_HASH)
            };
            c.kpageflags.push(f);
            c.mapcount.push(cnt);
            c.hash_slot.push(slot);
            c.mapped.push(mapped);
        }
        if let Some(phys) = phys {
            self.hash_physical(phys, &pfns, &to_read, &mut c)?;
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

    fn hash_physical(
        &self,
        phys: &PhysImage,
        pfns: &[u64],
        rows: &[usize],
        c: &mut FrameChunk,
    ) -> Result<()> {
        let read: Vec<Option<[u8; 16]>> = rows
            .par_chunks(256)
            .map_init(
                || (PageHasher::new(), Vec::new()),
                |(hasher, out), chunk| {
                    let mut buf = vec![0u8; chunk.len() * crate::PAGE_SIZE];
                    let mut ok = Vec::with_capacity(chunk.len());
                    for (k, &row) in chunk.iter().enumerate() {
                        let page = &mut buf[k * crate::PAGE_SIZE..(k + 1) * crate::PAGE_SIZE];
                        ok.push(matches!(phys.read_page(pfns[row], page), Ok(true)));
                    }
                    let pages: Vec<&[u8]> = buf.chunks_exact(crate::PAGE_SIZE).collect();
                    hasher.hash_or_zero(&pages, out);
                    ok.iter()
                        .zip(out.iter())
                        .map(|(&k, (h, _))| k.then_some(*h))
                        .collect::<Vec<_>>()
                },
            )
            .flatten()
            .collect();
        for (&row, h) in rows.iter().zip(read) {
            if let Some(h) = h {
                let i = (c.local_hashes.len() / 16) as u32;
                c.local_hashes.extend_from_slice(&h);
                c.hash_slot[row] = LOCAL | i;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{Vma, VmaKind};

    fn vma(start_page: u64, pages: u64) -> Vma {
        Vma {
            start: start_page * 4096,
            end: (start_page + pages) * 4096,
            perms: "rw-p".into(),
            offset: 0,
            dev: "00:00".into(),
            inode: 0,
            path: String::new(),
            kind: VmaKind::Anon,
            vm_flags: Vec::new(),
            rss_kb: 0,
            pss_kb: 0,
            swap_kb: 0,
            anon_huge_kb: 0,
        }
    }

    #[test]
    fn page_windows_split_big_and_group_small_mappings() {
        let p = HostProcess {
            info: ProcInfo {
                pid: 1,
                ppid: 0,
                comm: String::new(),
                cmdline: Vec::new(),
            },
            cgroup: String::new(),
            pid_ns: 0,
            vmas: vec![vma(0, 3), vma(10, 4), vma(100, 25)],
        };
        let w = HostScan::page_windows(&p, 10);
        let pages: Vec<(u64, u64)> = w.iter().map(|&(a, b)| (a / 4096, b / 4096)).collect();
        // [0,3) and [10,14) share a window; [100,125) is cut after 3 more pages, then by 10s.
        assert_eq!(pages, vec![(0, 103), (103, 113), (113, 123), (123, 125)]);
    }
}
