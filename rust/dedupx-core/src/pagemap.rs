//! `/proc/PID/pagemap`: one u64 per virtual page, read in large chunks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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
    pub fn for_each_mapped(
        &self,
        start: u64,
        end: u64,
        mut visit: impl FnMut(u64, PagemapEntry),
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
        assert_eq!(s.pfn(), None);
        assert!(PagemapEntry(PRESENT | FILE_SHARED).file_shared());
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
