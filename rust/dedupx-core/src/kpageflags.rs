//! `/proc/kpageflags` and `/proc/kpagecount`: one u64 per physical page, read in coalesced runs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Result, ScanError};

// Bit numbers from include/uapi/linux/kernel-page-flags.h. The core tests only these (the
// zero page is never read; see `pin_would_unshare`; unlisted frames are counted by class,
// see `host_frames::ChunkCoverage`); the analyses decode the rest in Python.
pub const KPF_LRU: u32 = 5;
pub const KPF_BUDDY: u32 = 10;
/// Set for a page that some page table maps; a page without it has a map count of 0
/// (checked on this kernel over every PFN of RAM, both files read a chunk apart).
pub const KPF_MMAP: u32 = 11;
pub const KPF_ANON: u32 = 12;
pub const KPF_SWAPBACKED: u32 = 14;
pub const KPF_COMPOUND_HEAD: u32 = 15;
pub const KPF_COMPOUND_TAIL: u32 = 16;
pub const KPF_NOPAGE: u32 = 20;
pub const KPF_KSM: u32 = 21;
pub const KPF_ZERO_PAGE: u32 = 24;

/// Whether copying this page with `process_vm_readv` would change it. That call pins the
/// pages it reads (FOLL_PIN), and since Linux 5.19 pinning an anonymous page that is not
/// exclusive to one mapping (a KSM page, a page shared since fork) first gives the reader
/// a private copy: the merge or the sharing is undone, and the target's PSS rises. Such
/// pages are read through /proc/PID/mem, which does not pin. `exclusive` is pagemap's
/// bit 56 for the mapping read through.
#[inline]
pub fn pin_would_unshare(flags: u64, exclusive: bool) -> bool {
    has(flags, KPF_KSM) || (has(flags, KPF_ANON) && !exclusive)
}

/// A page of a file's page cache, by its flags: on an LRU list, neither anon nor shmem.
#[inline]
pub fn is_file_cache(flags: u64) -> bool {
    has(flags, KPF_LRU) && !has(flags, KPF_ANON) && !has(flags, KPF_SWAPBACKED)
}

#[inline]
pub fn has(flags: u64, bit: u32) -> bool {
    flags & (1u64 << bit) != 0
}

/// Two PFNs closer than this are read in one run. The kernel's cost is per PFN (about
/// 100 ns each, looking up and snapshotting the page), not per call, so only small gaps
/// are worth reading through.
const COALESCE_GAP: u64 = 4;
/// Upper bound for one run so that the work spreads over threads and buffers stay small.
const MAX_RUN: u64 = 32 * 1024;

pub struct KpageFiles {
    flags: File,
    count: File,
    flags_path: PathBuf,
    count_path: PathBuf,
}

impl KpageFiles {
    pub fn open(proc_root: &Path) -> Result<Self> {
        let flags_path = proc_root.join("kpageflags");
        let count_path = proc_root.join("kpagecount");
        let flags = File::open(&flags_path)
            .map_err(|e| ScanError::from_kernel_io(flags_path.clone(), e))?;
        let count = File::open(&count_path)
            .map_err(|e| ScanError::from_kernel_io(count_path.clone(), e))?;
        Ok(Self {
            flags,
            count,
            flags_path,
            count_path,
        })
    }

    /// Reads the flags of `pfns`, which must be sorted and distinct.
    pub fn read_flags(&self, pfns: &[u64]) -> Result<Vec<u64>> {
        read_file(&self.flags, &self.flags_path, pfns)
    }

    /// Reads the map counts of `pfns`, which must be sorted and distinct. Copying a page
    /// does not change its map count, so unlike flags these may be read after contents.
    pub fn read_counts(&self, pfns: &[u64]) -> Result<Vec<u64>> {
        read_file(&self.count, &self.count_path, pfns)
    }

    /// The map counts of `pfns` (sorted, distinct), reading only those of pages that
    /// pagemap did not show mapped once: `exclusive[i]` is pagemap's bit 56 for a page
    /// mapping `pfns[i]`, and `flags[i]` its flags. An exclusive page that is not part of
    /// a large folio (flags without a compound bit) has a map count of exactly 1, since
    /// both files then count the page's own mappings. Skipping those reads spares most of
    /// a process's private pages the kernel's per-PFN cost.
    pub fn read_counts_unless_exclusive(
        &self,
        pfns: &[u64],
        flags: &[u64],
        exclusive: &crate::bitmap::BitVec,
    ) -> Result<Vec<u64>> {
        let known = |i: usize| {
            exclusive.get(i)
                && !has(flags[i], KPF_COMPOUND_HEAD)
                && !has(flags[i], KPF_COMPOUND_TAIL)
        };
        let wanted: Vec<u64> = (0..pfns.len())
            .filter(|&i| !known(i))
            .map(|i| pfns[i])
            .collect();
        let read = self.read_counts(&wanted)?;
        let mut next = read.into_iter();
        Ok((0..pfns.len())
            .map(|i| {
                if known(i) {
                    1
                } else {
                    next.next().unwrap_or(0)
                }
            })
            .collect())
    }
}

/// One u64 per PFN from a kpage* file, read in parallel coalesced runs straight into
/// the result.
fn read_file(file: &File, path: &Path, pfns: &[u64]) -> Result<Vec<u64>> {
    debug_assert!(pfns.windows(2).all(|w| w[0] < w[1]));
    let runs = coalesce(pfns);
    let mut out = vec![0u64; pfns.len()];
    let mut jobs = Vec::with_capacity(runs.len());
    let mut rest = out.as_mut_slice();
    for run in &runs {
        let (head, tail) = rest.split_at_mut(run.end_idx - run.first_idx);
        jobs.push((run, head));
        rest = tail;
    }
    jobs.into_par_iter().try_for_each(|(run, dst)| {
        read_run(file, path, run, &pfns[run.first_idx..run.end_idx], dst)
    })?;
    Ok(out)
}

struct Run {
    start: u64,
    len: u64,
    first_idx: usize,
    end_idx: usize,
}

fn coalesce(pfns: &[u64]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (i, &pfn) in pfns.iter().enumerate() {
        if let Some(run) = runs.last_mut() {
            let end = run.start + run.len;
            if pfn < end + COALESCE_GAP && pfn + 1 - run.start <= MAX_RUN {
                run.len = pfn + 1 - run.start;
                run.end_idx = i + 1;
                continue;
            }
        }
        runs.push(Run {
            start: pfn,
            len: 1,
            first_idx: i,
            end_idx: i + 1,
        });
    }
    runs
}

fn read_run(file: &File, path: &Path, run: &Run, wanted: &[u64], dst: &mut [u64]) -> Result<()> {
    if run.len as usize == wanted.len() {
        // Every PFN of the run is wanted (a host's unmapped memory, mostly): read straight
        // into the result, with no buffer to fault in and copy out of.
        // SAFETY: the bytes of `dst` (u64s, for which any bit pattern is valid), viewed as
        // bytes for the length of the borrow.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), dst.len() * 8) };
        return fill(file, path, run.start * 8, bytes);
    }
    let mut buf = vec![0u8; run.len as usize * 8];
    fill(file, path, run.start * 8, &mut buf)?;
    for (d, &pfn) in dst.iter_mut().zip(wanted) {
        let off = ((pfn - run.start) * 8) as usize;
        let mut word = [0u8; 8];
        word.copy_from_slice(&buf[off..off + 8]);
        *d = u64::from_ne_bytes(word);
    }
    Ok(())
}

/// Reads `buf.len()` bytes of a kpage* file from `offset`; past the end of physical memory
/// the rest of `buf` is left as it is (zeros).
fn fill(file: &File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file
            .read_at(&mut buf[filled..], offset + filled as u64)
            .map_err(|e| ScanError::from_kernel_io(path.to_path_buf(), e))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_close_pfns_and_splits_far_ones() {
        let pfns = [10, 11, 14, 10_000, 10_001];
        let runs = coalesce(&pfns);
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].start, runs[0].len), (10, 5));
        assert_eq!((runs[0].first_idx, runs[0].end_idx), (0, 3));
        assert_eq!((runs[1].start, runs[1].len), (10_000, 2));
        assert_eq!((runs[1].first_idx, runs[1].end_idx), (3, 5));
    }

    #[test]
    fn runs_never_exceed_the_cap() {
        let pfns: Vec<u64> = (0..MAX_RUN * 3).collect();
        let runs = coalesce(&pfns);
        assert_eq!(runs.len(), 3);
        assert!(runs.iter().all(|r| r.len == MAX_RUN));
    }
}
