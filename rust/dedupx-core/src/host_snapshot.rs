//! A whole-host snapshot as the binding hands it out: System RAM from iomem, pass 1 over
//! every process, the page cache of files asked for, and the physical memory source the
//! `frames` rows are hashed from.

use std::fs;
use std::path::PathBuf;

use crate::error::Result;
use crate::file_cache::cached_pages;
use crate::host_frames::FrameChunk;
use crate::host_scan::{scan_host, HostScan};
use crate::iomem::read_system_ram;
use crate::live_memory::choose_physical;
use crate::page_cache_walk::{local_mounts, walk_page_cache, PageCacheReport};
use crate::page_hash::PageHash;
use crate::phys_image::{PhysImage, PAGE};
use crate::process_scan::ScanOptions;
use crate::stages::Progress;

#[derive(Debug, Clone)]
pub struct HostOptions {
    pub scan: ScanOptions,
    /// Where devices are (/dev/crash, /dev/mem); tests point it elsewhere.
    pub dev_root: PathBuf,
    /// A physical memory source to use instead of trying the live ones.
    pub phys: Option<PathBuf>,
    /// A file to read System RAM ranges from instead of PROC_ROOT/iomem.
    pub iomem: Option<PathBuf>,
    /// Files whose cached pages no process maps are hashed too.
    pub cached_files: Vec<PathBuf>,
    /// Without a physical memory source, hash the page cache of every file of the local
    /// disk filesystems (see [`crate::page_cache_walk`]).
    pub page_cache: bool,
}

/// Per file asked to cover: (cached pages, pages), or why it could not be read.
pub type CachedFileReport = (PathBuf, std::result::Result<(u64, u64), String>);

pub struct HostSnapshot {
    pub scan: HostScan,
    pub phys: Option<PhysImage>,
    /// Why each live source was not used, when none was.
    pub phys_notes: Vec<String>,
    /// System RAM as (first PFN, end PFN) ranges.
    pub ram: Vec<(u64, u64)>,
    pub cached_files: Vec<CachedFileReport>,
    /// The walk of the host's page cache, when it ran.
    pub page_cache: Option<PageCacheReport>,
}

impl HostSnapshot {
    /// Runs pass 1; the rows are made afterwards with [`HostScan::process_pages`] and
    /// [`HostSnapshot::frames`].
    pub fn capture(opts: &HostOptions, progress: Progress) -> Result<Self> {
        let proc_root = &opts.scan.proc_root;
        let iomem = opts
            .iomem
            .clone()
            .unwrap_or_else(|| proc_root.join("iomem"));
        let ram_bytes = read_system_ram(&iomem)?;
        let mut scan = scan_host(&opts.scan, progress)?;
        let (cached_files, mut found) = read_cached_files(&scan, &opts.cached_files);
        let (phys, phys_notes) =
            choose_physical(opts.phys.as_deref(), proc_root, &opts.dev_root, &ram_bytes)?;
        let page_cache = if opts.page_cache && phys.is_none() {
            let mountinfo =
                fs::read_to_string(proc_root.join("self/mountinfo")).unwrap_or_default();
            let mounts = local_mounts(&mountinfo);
            let report = walk_page_cache(&mounts, proc_root, progress, |pages| {
                found.extend(pages.iter().map(|&(_, pfn, h)| (pfn, h)))
            })?;
            Some(report)
        } else {
            None
        };
        add_cached_pages(&mut scan, found);
        let ram = ram_bytes
            .iter()
            .map(|&(a, b)| (a.div_ceil(PAGE), b / PAGE))
            .filter(|(a, b)| b > a)
            .collect();
        Ok(Self {
            scan,
            phys,
            phys_notes,
            ram,
            cached_files,
            page_cache,
        })
    }

    /// `frames` rows for PFNs `[start, end)` of System RAM.
    pub fn frames(&self, start: u64, end: u64) -> Result<FrameChunk> {
        self.scan.frames_chunk(start, end, self.phys.as_ref())
    }
}

/// Hashes the cached pages of `files` (their PFNs are otherwise invisible without
/// /proc/kcore). Returns per file its cached and total pages, or why it could not be read,
/// and the pages found (PFN, hash), for [`add_cached_pages`].
pub fn read_cached_files(
    scan: &HostScan,
    files: &[PathBuf],
) -> (Vec<CachedFileReport>, Vec<(u64, PageHash)>) {
    let mut report = Vec::new();
    let mut found = Vec::new();
    for path in files {
        match cached_pages(path, &scan.proc_root) {
            Ok(c) => {
                report.push((path.clone(), Ok((c.pages.len() as u64, c.file_pages))));
                found.extend(c.pages.iter().map(|&(_, pfn, h)| (pfn, h)));
            }
            Err(e) => report.push((path.clone(), Err(e.to_string()))),
        }
    }
    (report, found)
}

/// Adds cached pages (PFN, hash) that no process maps to the scan's page-cache frames,
/// each PFN once.
pub fn add_cached_pages(scan: &mut HostScan, found: Vec<(u64, PageHash)>) {
    let mapped = &scan.pfns;
    scan.file_cache.extend(
        found
            .into_iter()
            .filter(|(pfn, _)| mapped.binary_search(pfn).is_err()),
    );
    scan.file_cache.sort_unstable_by_key(|&(pfn, _)| pfn);
    scan.file_cache.dedup_by_key(|e| e.0);
}
