//! Copies pages out of another process with `process_vm_readv`, falling back to
//! `/proc/PID/mem` (which may read PROT_NONE pages) for pages the fast path cannot copy.
//!
//! Only pages the pagemap showed present are asked for, so the copy does not fault pages
//! in; a page unmapped or reclaimed in between makes the read fail or is caught by the
//! pagemap check that follows it, and the page is recorded as not read.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::error::{Result, ScanError};
use crate::PAGE_SIZE;

/// Reads the pages at `vaddrs` (sorted, page-aligned) into `buf` (`vaddrs.len()` pages) and
/// returns for each page whether it was read. Consecutive pages go in one iovec.
pub fn read_pages(
    pid: u32,
    mem: Option<&File>,
    vaddrs: &[u64],
    buf: &mut [u8],
    ok: &mut Vec<bool>,
) -> Result<()> {
    debug_assert_eq!(buf.len(), vaddrs.len() * PAGE_SIZE);
    ok.clear();
    ok.resize(vaddrs.len(), false);
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
                _ => {
                    return Err(ScanError::Io {
                        path: format!("process_vm_readv(pid {pid})").into(),
                        source: e,
                    })
                }
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
        read_pages(pid, None, &vaddrs, &mut buf, &mut ok).expect("read");
        assert_eq!(ok, vec![false, true]);
        assert!(buf[PAGE_SIZE..].iter().all(|&b| b == 7));
    }
}
