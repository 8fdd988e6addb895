//! `/proc/PID/pagemap`: one u64 per virtual page, read in large chunks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Result, ScanError};
use crate::PAGE_SIZE;

const PFN_MASK: u64 = (1 << 55) - 1;
const EXCLUSIVE: u64 = 1 << 56;
const FILE_SHARED: u64 = 1 << 61;
const SWAPPED: u64 = 1 << 62;
const PRESENT: u64 = 1 << 63;

/// Entries per pread: 512 KiB of pagemap covers 256 MiB of address space; reads of this
/// size run at the pagemap's measured limit, smaller ones pay per-call costs.
const CHUNK_ENTRIES: u64 = 64 * 1024;

// PAGEMAP_SCAN (include/uapi/linux/fs.h): _IOWR('f', 16, struct pm_scan_arg).
const PAGEMAP_SCAN: u64 = 0xC060_6610;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// Ranges smaller than this are read whole: one pread of their entries costs less.
const SCAN_FROM_BYTES: u64 = 64 << 20;
/// Regions per PAGEMAP_SCAN call.
const SCAN_REGIONS: usize = 4096;
/// Cleared once the kernel says it has no PAGEMAP_SCAN.
static SCAN_WORKS: AtomicBool = AtomicBool::new(true);

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// One decoded pagemap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    pub fn present(self) -> bool {
        self.0 & PRESENT != 0
    }
    pub fn swapped(self) -> bool {
        self.0 & SWAPPED != 0
    }
    pub fn file_shared(self) -> bool {
        self.0 & FILE_SHARED != 0
    }
    pub fn exclusive(self) -> bool {
        self.0 & EXCLUSIVE != 0
    }
    /// The PFN of a present page (zero when the reader lacks CAP_SYS_ADMIN).
    pub fn pfn(self) -> Option<u64> {
        self.present().then_some(self.0 & PFN_MASK)
    }
    /// Where a swapped-out page is: (swap type, page offset in that area). The kernel
    /// packs the type in bits 0-4 and the offset in bits 5-54 (zero for readers without
    /// CAP_SYS_ADMIN). Migration and other non-swap entries also read as swapped; their
    /// types lie past the swap areas, and callers drop types no area has.
    pub fn swap_slot(self) -> Option<(u32, u64)> {
        (self.swapped() && !self.present())
            .then_some(((self.0 & 0x1f) as u32, (self.0 & PFN_MASK) >> 5))
    }
}

/// Fails with `PfnHidden` when pages are present but every PFN reads as zero: the kernel
/// hides PFNs from readers without CAP_SYS_ADMIN. `path` names the pagemap in the error.
pub fn check_pfns_visible(
    present_pages: u64,
    mut pfns: impl Iterator<Item = u64>,
    path: PathBuf,
) -> Result<()> {
    if present_pages > 0 && pfns.all(|pfn| pfn == 0) {
        return Err(ScanError::PfnHidden { path });
    }
    Ok(())
}

/// An open pagemap; clones share the file.
#[derive(Clone)]
pub struct Pagemap {
    file: Arc<File>,
    path: PathBuf,
    pid: u32,
}

impl Pagemap {
    pub fn open(proc_root: &Path, pid: u32) -> Result<Self> {
        let path = proc_root.join(pid.to_string()).join("pagemap");
        let file = File::open(&path).map_err(|e| ScanError::from_proc_io(pid, path.clone(), e))?;
        Ok(Self {
            file: Arc::new(file),
            path,
            pid,
        })
    }

    /// Calls `visit(vaddr, entry)` for every present or swapped page in `[start, end)`.
    ///
    /// Where the kernel has `PAGEMAP_SCAN` (6.7+), it first asks which runs of the range
    /// hold present or swapped pages and reads the entries of those runs only: a sparse
    /// mapping (a sanitizer's terabytes of shadow, a guest's untouched RAM) costs its
    /// page-table walk, not eight bytes per page of address space.
    pub fn for_each_mapped(
        &self,
        start: u64,
        end: u64,
        mut visit: impl FnMut(u64, PagemapEntry),
    ) -> Result<()> {
        if end <= start {
            return Ok(());
        }
        if SCAN_WORKS.load(Ordering::Relaxed) && end - start > SCAN_FROM_BYTES {
            if let Some(runs) = self.populated_runs(start, end) {
                for (a, b) in runs {
                    self.read_entries(a, b, &mut visit)?;
                }
                return Ok(());
            }
        }
        self.read_entries(start, end, &mut visit)
    }

    /// `[start, end)` cut into pieces of at most `max_pages` pages that together hold
    /// every present or swapped page of it, for reading in parallel (each with
    /// [`Self::for_each_mapped`]): where `PAGEMAP_SCAN` helps, the pieces cover only the
    /// runs it finds; elsewhere they cover the whole range.
    pub fn pieces(&self, start: u64, end: u64, max_pages: u64) -> Vec<(u64, u64)> {
        if end <= start {
            return Vec::new();
        }
        let runs = if SCAN_WORKS.load(Ordering::Relaxed) && end - start > SCAN_FROM_BYTES {
            self.populated_runs(start, end)
        } else {
            None
        };
        let step = max_pages.max(1) * PAGE_SIZE as u64;
        runs.unwrap_or_else(|| vec![(start, end)])
            .into_iter()
            .flat_map(|(a, b)| {
                (a..b)
                    .step_by(step as usize)
                    .map(move |p| (p, b.min(p + step)))
            })
            .collect()
    }

    /// The runs of `[start, end)` with present or swapped pages, by `PAGEMAP_SCAN`; None
    /// where the kernel cannot say (then every entry is read).
    fn populated_runs(&self, start: u64, end: u64) -> Option<Vec<(u64, u64)>> {
        let mut regions = vec![PageRegion::default(); SCAN_REGIONS];
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut at = start;
        while at < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: at,
                end,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                ..PmScanArg::default()
            };
            // SAFETY: `arg` and `regions` outlive the call; the kernel writes at most
            // `vec_len` regions and `walk_end`.
            let n = unsafe { libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
            if n < 0 {
                let errno = std::io::Error::last_os_error().raw_os_error();
                if matches!(errno, Some(libc::ENOTTY) | Some(libc::EINVAL)) && runs.is_empty() {
                    SCAN_WORKS.store(false, Ordering::Relaxed);
                }
                return None;
            }
            for r in &regions[..(n as usize).min(regions.len())] {
                // A full vector makes the next call repeat regions: keep each page once.
                let a = r.start.max(runs.last().map_or(start, |l| l.1)).max(start);
                let b = r.end.min(end);
                if a < b {
                    match runs.last_mut() {
                        Some(last) if last.1 == a => last.1 = b,
                        _ => runs.push((a, b)),
                    }
                }
            }
            if arg.walk_end <= at {
                return None; // no progress: do not trust it
            }
            at = arg.walk_end;
        }
        Some(runs)
    }

    fn read_entries(
        &self,
        start: u64,
        end: u64,
        visit: &mut impl FnMut(u64, PagemapEntry),
    ) -> Result<()> {
        let first = start / PAGE_SIZE as u64;
        let last = end / PAGE_SIZE as u64;
        let mut buf = vec![0u8; (CHUNK_ENTRIES.min(last - first) * 8) as usize];
        let mut page = first;
        while page < last {
            let n = CHUNK_ENTRIES.min(last - page);
            let bytes = &mut buf[..(n * 8) as usize];
            self.read_exact_at(bytes, page * 8)?;
            for (i, word) in bytes.chunks_exact(8).enumerate() {
                let mut w = [0u8; 8];
                w.copy_from_slice(word);
                let entry = PagemapEntry(u64::from_ne_bytes(w));
                if entry.0 & (PRESENT | SWAPPED) != 0 {
                    visit((page + i as u64) * PAGE_SIZE as u64, entry);
                }
            }
            page += n;
        }
        Ok(())
    }

    /// Reads the entries of `count` consecutive pages starting at `vaddr`.
    pub fn read_range(&self, vaddr: u64, count: usize, out: &mut Vec<u64>) -> Result<()> {
        let mut bytes = vec![0u8; count * 8];
        self.read_exact_at(&mut bytes, vaddr / PAGE_SIZE as u64 * 8)?;
        out.clear();
        out.extend(bytes.chunks_exact(8).map(|w| {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            u64::from_ne_bytes(a)
        }));
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
            {
                // A short read at the end means the mm is gone.
                Ok(0) => return Err(ScanError::ProcessGone { pid: self.pid }),
                Ok(n) => filled += n,
                Err(e) => return Err(ScanError::from_proc_io(self.pid, self.path.clone(), e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_bits() {
        let e = PagemapEntry(PRESENT | EXCLUSIVE | 0x1234);
        assert!(e.present() && e.exclusive() && !e.swapped() && !e.file_shared());
        assert_eq!(e.pfn(), Some(0x1234));
        let s = PagemapEntry(SWAPPED | 0x55);
        assert!(s.swapped() && !s.present());
        assert_eq!(s.swap_slot(), Some((0x15, 2)));
        assert_eq!(e.swap_slot(), None);
        assert_eq!(s.pfn(), None);
        assert!(PagemapEntry(PRESENT | FILE_SHARED).file_shared());
    }

    #[test]
    fn scan_finds_the_same_pages_as_a_full_read() {
        // 1 GiB of address space with three pages touched, one run of them across a
        // 2 MiB boundary: PAGEMAP_SCAN (where the kernel has it) and the full read agree.
        let len = 1usize << 30;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        } as *mut u8;
        assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
        // SAFETY: the mapping allows no huge pages, and is written in bounds.
        unsafe {
            libc::madvise(p as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE);
            for off in [12345usize * 4096, (2 << 20) - 4096, 2 << 20, len - 4096] {
                *p.add(off) = 1;
            }
        }
        let (a, b) = (p as u64, p as u64 + len as u64);
        let pm = Pagemap::open(Path::new("/proc"), std::process::id()).expect("own pagemap");
        let mut scanned = Vec::new();
        pm.for_each_mapped(a, b, |va, e| scanned.push((va - a, e.present())))
            .expect("test setup");
        let mut full = Vec::new();
        pm.read_entries(a, b, &mut |va, e| full.push((va - a, e.present())))
            .expect("test setup");
        let runs = pm.populated_runs(a, b);
        // SAFETY: unmaps what was mapped above.
        unsafe { libc::munmap(p as *mut libc::c_void, len) };
        assert_eq!(scanned, full);
        assert_eq!(scanned.len(), 4);
        // Kernels from 6.7 have PAGEMAP_SCAN: there it must have found the three runs.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("test setup");
        let mut v = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|x| x.parse::<u32>());
        if let (Some(Ok(major)), Some(Ok(minor))) = (v.next(), v.next()) {
            if (major, minor) >= (6, 7) {
                let runs: Vec<u64> = runs
                    .expect("PAGEMAP_SCAN")
                    .iter()
                    .map(|r| r.1 - r.0)
                    .collect();
                assert_eq!(runs, vec![8192, 4096, 4096]);
            }
        }
    }

    #[test]
    fn reads_own_pagemap() {
        // A page we wrote is present; its entry must say so.
        let mut page = vec![1u8; PAGE_SIZE * 4];
        page[PAGE_SIZE] = 2;
        let addr = page.as_ptr() as u64 + PAGE_SIZE as u64;
        let aligned = addr & !(PAGE_SIZE as u64 - 1);
        let pm = Pagemap::open(Path::new("/proc"), std::process::id()).expect("own pagemap");
        let mut seen = Vec::new();
        pm.for_each_mapped(aligned, aligned + PAGE_SIZE as u64, |va, e| {
            seen.push((va, e))
        })
        .expect("read");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, aligned);
        assert!(seen[0].1.present());
        assert_eq!(page[PAGE_SIZE], 2);
    }
}
