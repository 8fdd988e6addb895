//! Copies pages out of another process with `process_vm_readv`, falling back to
//! `/proc/PID/mem` (which may read PROT_NONE pages) for pages the fast path cannot copy.
//!
//! Only pages the pagemap showed present are asked for, so the copy does not fault pages
//! in; a page unmapped or reclaimed in between makes the read fail or is caught by the
//! pagemap check that follows it, and the page is recorded as not read.
//!
//! [`ProcessPages`] is the [`PageSource`] over processes' memory: a stream is a PID, and each
//! copy is re-checked against the pagemap, so a page remapped meanwhile is dropped, not
//! mis-attributed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::bitmap::BitVec;
use crate::error::{Result, ScanError};
use crate::page_source::{PageSource, WindowShape};
use crate::pagemap::{Pagemap, PagemapEntry};
use crate::PAGE_SIZE;

/// Pages copied by one `process_vm_readv` and hashed while still in L2; they lie within
/// 2048 pages of address space, so that the pagemap re-check after the copy is one small
/// read.
pub const WINDOW: WindowShape = WindowShape {
    pages: 128,
    span: 2048 * PAGE_SIZE as u64,
};

/// The files a window needs from its process: pagemap for the re-check after the copy,
/// and /proc/PID/mem as the fallback for pages under PROT_NONE.
#[derive(Clone)]
pub struct ProcessFiles {
    pub pid: u32,
    pub pagemap: Pagemap,
    pub mem: Option<Arc<File>>,
}

impl ProcessFiles {
    pub fn open(proc_root: &Path, pid: u32) -> Result<Self> {
        let pagemap = Pagemap::open(proc_root, pid)?;
        let mem = File::open(proc_root.join(pid.to_string()).join("mem"))
            .ok()
            .map(Arc::new);
        Ok(Self { pid, pagemap, mem })
    }
}

/// Processes' memory as a page source: stream = PID, address = virtual address. A task's
/// slot is the index of the PFN the page must still map, in `pfns`; slots set in `unpinned`
/// are read through /proc/PID/mem (see `kpageflags::pin_would_unshare`).
pub struct ProcessPages<'a> {
    proc_root: &'a Path,
    pfns: &'a [u64],
    unpinned: &'a BitVec,
    /// Files opened once for a one-process scan; otherwise each PID's are opened as needed.
    files: Option<ProcessFiles>,
    tolerate_exit: bool,
}

impl<'a> ProcessPages<'a> {
    /// One process whose files are already open; its exit fails the read.
    pub fn one(files: ProcessFiles, pfns: &'a [u64], unpinned: &'a BitVec) -> Self {
        Self {
            proc_root: Path::new("/"),
            pfns,
            unpinned,
            files: Some(files),
            tolerate_exit: false,
        }
    }

    /// Any process under `proc_root`; one that exits loses its remaining pages.
    pub fn any(proc_root: &'a Path, pfns: &'a [u64], unpinned: &'a BitVec) -> Self {
        Self {
            proc_root,
            pfns,
            unpinned,
            files: None,
            tolerate_exit: true,
        }
    }
}

impl PageSource for ProcessPages<'_> {
    type Stream = ProcessFiles;
    type Error = ScanError;

    fn window_shape(&self) -> WindowShape {
        WINDOW
    }

    fn open_stream(&self, pid: u32) -> Result<ProcessFiles> {
        match &self.files {
            Some(f) => Ok(f.clone()),
            None => ProcessFiles::open(self.proc_root, pid),
        }
    }

    fn read_window(
        &self,
        files: &ProcessFiles,
        addrs: &[u64],
        slots: &[u32],
        buf: &mut [u8],
        ok: &mut Vec<bool>,
    ) -> Result<()> {
        let unpinned: Vec<bool> = slots
            .iter()
            .map(|&s| self.unpinned.get(s as usize))
            .collect();
        read_pages(files.pid, files.mem.as_deref(), addrs, &unpinned, buf, ok)
    }

    /// The mapping may have changed between pagemap and copy: keep only pages whose PFN is
    /// still the one whose flags were read.
    fn verify(
        &self,
        files: &ProcessFiles,
        addrs: &[u64],
        slots: &[u32],
        ok: &mut [bool],
    ) -> Result<()> {
        let (Some(&first), Some(&last)) = (addrs.first(), addrs.last()) else {
            return Ok(());
        };
        let span = ((last - first) / PAGE_SIZE as u64 + 1) as usize;
        let mut now = Vec::with_capacity(span);
        files.pagemap.read_range(first, span, &mut now)?;
        for ((&va, &slot), ok) in addrs.iter().zip(slots).zip(ok.iter_mut()) {
            let at = ((va - first) / PAGE_SIZE as u64) as usize;
            *ok = *ok && PagemapEntry(now[at]).pfn() == Some(self.pfns[slot as usize]);
        }
        Ok(())
    }

    fn loses_stream(&self, err: &ScanError) -> bool {
        self.tolerate_exit
            && matches!(
                err,
                ScanError::ProcessGone { .. } | ScanError::NoSuchProcess { .. }
            )
    }
}

/// Reads the pages at `vaddrs` (sorted, page-aligned) into `buf` (`vaddrs.len()` pages) and
/// returns for each page whether it was read. Pages marked `unpinned` are read through
/// /proc/PID/mem (`mem`), which does not pin them; the others with `process_vm_readv`,
/// consecutive pages in one iovec.
pub fn read_pages(
    pid: u32,
    mem: Option<&File>,
    vaddrs: &[u64],
    unpinned: &[bool],
    buf: &mut [u8],
    ok: &mut Vec<bool>,
) -> Result<()> {
    debug_assert_eq!(buf.len(), vaddrs.len() * PAGE_SIZE);
    debug_assert_eq!(unpinned.len(), vaddrs.len());
    ok.clear();
    ok.resize(vaddrs.len(), false);
    let mut i = 0;
    while i < vaddrs.len() {
        let run = unpinned[i..]
            .iter()
            .take_while(|&&u| u == unpinned[i])
            .count();
        let pages = &mut buf[i * PAGE_SIZE..(i + run) * PAGE_SIZE];
        if unpinned[i] {
            for (k, page) in pages.chunks_exact_mut(PAGE_SIZE).enumerate() {
                ok[i + k] = read_forced(mem, vaddrs[i + k], page);
            }
        } else {
            read_pinned(pid, mem, &vaddrs[i..i + run], pages, &mut ok[i..i + run])?;
        }
        i += run;
    }
    Ok(())
}

/// `process_vm_readv`, falling back to /proc/PID/mem for a page it cannot copy.
fn read_pinned(
    pid: u32,
    mem: Option<&File>,
    vaddrs: &[u64],
    buf: &mut [u8],
    ok: &mut [bool],
) -> Result<()> {
    let mut i = 0;
    while i < vaddrs.len() {
        match readv(pid, &vaddrs[i..], &mut buf[i * PAGE_SIZE..]) {
            Ok(bytes) => {
                let pages = bytes / PAGE_SIZE;
                ok[i..i + pages].iter_mut().for_each(|o| *o = true);
                i += pages;
                // The page where the copy stopped could not be read: try the fallback.
                if i < vaddrs.len() {
                    ok[i] = read_forced(mem, vaddrs[i], &mut buf[i * PAGE_SIZE..][..PAGE_SIZE]);
                    i += 1;
                }
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::ESRCH) => return Err(ScanError::ProcessGone { pid }),
                Some(libc::EFAULT) => {
                    ok[i] = read_forced(mem, vaddrs[i], &mut buf[i * PAGE_SIZE..][..PAGE_SIZE]);
                    i += 1;
                }
                _ => return Err(ScanError::Copy { pid, source: e }),
            },
        }
    }
    Ok(())
}

fn read_forced(mem: Option<&File>, vaddr: u64, page: &mut [u8]) -> bool {
    mem.is_some_and(|f| matches!(f.read_at(page, vaddr), Ok(n) if n == PAGE_SIZE))
}

fn readv(pid: u32, vaddrs: &[u64], buf: &mut [u8]) -> io::Result<usize> {
    let mut remote: Vec<libc::iovec> = Vec::new();
    for &va in vaddrs {
        match remote.last_mut() {
            Some(last) if last.iov_base as u64 + last.iov_len as u64 == va => {
                last.iov_len += PAGE_SIZE;
            }
            _ => {
                if remote.len() == IOV_MAX {
                    break;
                }
                remote.push(libc::iovec {
                    iov_base: va as *mut libc::c_void,
                    iov_len: PAGE_SIZE,
                });
            }
        }
    }
    let total: usize = remote.iter().map(|r| r.iov_len).sum();
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: total,
    };
    // SAFETY: `local` points into `buf`, which holds at least `total` bytes (one page per
    // vaddr, and the iovecs cover a prefix of `vaddrs`); the remote iovecs are only
    // addresses in the other process, which the kernel checks.
    let n = unsafe {
        libc::process_vm_readv(
            pid as libc::pid_t,
            &local,
            1,
            remote.as_ptr(),
            remote.len() as libc::c_ulong,
            0,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The kernel's limit on iovecs per call.
const IOV_MAX: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_pages_and_skips_unmapped() {
        let pid = std::process::id();
        let mut mem = vec![0u8; PAGE_SIZE * 3];
        let base = (mem.as_ptr() as u64 + PAGE_SIZE as u64 - 1) & !(PAGE_SIZE as u64 - 1);
        let off = (base - mem.as_ptr() as u64) as usize;
        mem[off..off + PAGE_SIZE].fill(7);
        // Address 4096 is never mapped: the read must fail for that page only.
        let vaddrs = [4096, base];
        let mut buf = vec![0u8; PAGE_SIZE * 2];
        let mut ok = Vec::new();
        read_pages(pid, None, &vaddrs, &[false, false], &mut buf, &mut ok).expect("read");
        assert_eq!(ok, vec![false, true]);
        assert!(buf[PAGE_SIZE..].iter().all(|&b| b == 7));
    }
}
