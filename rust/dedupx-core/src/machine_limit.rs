//! What the machine allows a process scan: copying pages out of another process with
//! `process_vm_readv` and hashing them with batched BLAKE3 on every thread, with no
//! metadata at all (no pagemap, no flags, no counts, no re-checks). Benchmarks measure it
//! in the same run as a scan and print the scan's share of it.

use std::io;
use std::time::Instant;

use rayon::prelude::*;

use crate::page_hash::{PageHash, PageHasher};
use crate::process_memory::WINDOW;
use crate::PAGE_SIZE;

/// How a limit run went: pages copied and hashed, and its wall-clock seconds.
#[derive(Debug, Clone, Copy)]
pub struct LimitRun {
    pub pages: u64,
    pub seconds: f64,
}

/// Copies `pages` pages of process `pid` from `start` (all present: the caller made them)
/// in windows of the scan's size, one `process_vm_readv` each, and hashes every page
/// (`skip_zero`: all-zero pages are only tested, as the scan does). Runs on the current
/// rayon pool.
pub fn copy_and_hash(pid: u32, start: u64, pages: usize, skip_zero: bool) -> io::Result<LimitRun> {
    let windows: Vec<(u64, usize)> = (0..pages)
        .step_by(WINDOW.pages)
        .map(|p| (start + (p * PAGE_SIZE) as u64, WINDOW.pages.min(pages - p)))
        .collect();
    let t0 = Instant::now();
    windows.par_iter().try_for_each_init(
        || {
            (
                PageHasher::new(),
                vec![0u8; WINDOW.pages * PAGE_SIZE],
                Vec::new(),
            )
        },
        |(hasher, buf, out), &(addr, n)| -> io::Result<()> {
            let data = &mut buf[..n * PAGE_SIZE];
            copy(pid, addr, data)?;
            let refs: Vec<&[u8]> = data.chunks_exact(PAGE_SIZE).collect();
            if skip_zero {
                hasher.hash_or_zero(&refs, out);
            } else {
                let mut hashes: Vec<PageHash> = vec![[0; 16]; n];
                hasher.hash_pages(&refs, &mut hashes);
                std::hint::black_box(&hashes);
            }
            std::hint::black_box(&out);
            Ok(())
        },
    )?;
    Ok(LimitRun {
        pages: pages as u64,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn copy(pid: u32, addr: u64, data: &mut [u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: `local` is exactly `data`; the remote range is only an address in the other
    // process, which the kernel checks.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        n if n as usize != data.len() => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("copied {n} of {} bytes at {addr:#x}", data.len()),
        )),
        _ => Ok(()),
    }
}
