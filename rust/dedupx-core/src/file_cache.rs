//! Page-cache pages of files no process maps (a guest's disk image read through the host
//! page cache, the host's own files), found without /proc/kcore. A window of the file is
//! mapped read-only into our own address space; `mincore` tells which of its pages are
//! cached; only those are entered into our page tables (`MADV_POPULATE_READ`, run by run,
//! with readahead off), so our own pagemap gives their PFNs; their contents are copied
//! from our mapping with `process_vm_readv`. So no page is read in from disk, and a file
//! truncated meanwhile costs its pages (EFAULT), never a SIGBUS. Unlike a guest's pages
//! these are the host's page cache: populating marks them accessed, which is the price of
//! seeing them at all.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Result, ScanError};
use crate::page_hash::PageHash;
use crate::page_source::{PageSource, WindowShape};
use crate::pagemap::Pagemap;
use crate::read_and_hash::read_and_hash;
use crate::read_plan::{ReadPlan, ReadTask};
use crate::PAGE_SIZE;

/// Pages of a file mapped at a time: 1 GiB of address space, 256 KiB of mincore vector.
const WINDOW_PAGES: usize = 1 << 18;

/// The cached pages of one file: (page index in the file, PFN, hash).
#[derive(Debug, Default)]
pub struct CachedPages {
    pub path: PathBuf,
    pub pages: Vec<(u64, u64, PageHash)>,
    /// Pages of the file in all, cached or not.
    pub file_pages: u64,
    /// Pages cached when looked at but gone (evicted, truncated) before they were read.
    pub vanished: u64,
    /// Windows of the file mapped and asked with `mincore`: those `cachestat` could not
    /// rule out.
    pub windows_examined: u64,
}

struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: addr/len are exactly what mmap returned; nothing borrows the mapping past
        // the function that owns this guard.
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
}

/// Opens a file to look at its page cache: read-only, without updating its access time.
pub fn open_for_cache(path: &Path) -> std::io::Result<File> {
    let open = |flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
    };
    // O_NOATIME is refused (EPERM) on files of other users unless we have CAP_FOWNER.
    open(libc::O_NOATIME).or_else(|_| open(0))
}

pub fn cached_pages(path: &Path, proc_root: &Path) -> Result<CachedPages> {
    let io = |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = open_for_cache(path).map_err(io)?;
    let own = Pagemap::open(proc_root, std::process::id())?;
    cached_pages_of(&file, path, &own)
}

/// The cached pages of the open `file` (named `path` in errors); `own` is dedupx's own
/// pagemap, which gives the PFNs of the pages it maps.
pub fn cached_pages_of(file: &File, path: &Path, own: &Pagemap) -> Result<CachedPages> {
    let io = |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(io)?.len() as usize;
    let pages = len / PAGE_SIZE; // a partial last page is left out: it is not a whole page
    let mut out = CachedPages {
        path: path.to_path_buf(),
        file_pages: pages as u64,
        ..Default::default()
    };
    // `mincore` looks the file up page by page, cached or not: over a sparse 8 TiB disk
    // image with a few pages cached that is 2^31 lookups (minutes of kernel time).
    // `cachestat` walks only what is cached, so ranges it finds empty are skipped and
    // partly cached ones halved until a window is left; without it, every window is
    // examined.
    let mut ranges = vec![(0usize, pages)];
    while let Some((a, b)) = ranges.pop() {
        let cached = cachestat(file, (a * PAGE_SIZE) as u64, ((b - a) * PAGE_SIZE) as u64);
        if cached == Some(0) {
            continue;
        }
        let whole = cached.is_none_or(|c| c >= (b - a) as u64);
        if b - a > WINDOW_PAGES && !whole {
            // Split on a window boundary; the lower half is examined first, so pages
            // come out in file order.
            let mid = a + ((b - a) / 2).div_ceil(WINDOW_PAGES) * WINDOW_PAGES;
            ranges.push((mid, b));
            ranges.push((a, mid));
            continue;
        }
        let mut first = a;
        while first < b {
            let n = WINDOW_PAGES.min(b - first);
            cached_window(file, first, n, own, &mut out).map_err(io)?;
            out.windows_examined += 1;
            first += n;
        }
    }
    Ok(out)
}

/// Pages of `file` in the page cache within bytes `[off, off + len)` (`len` 0: to the
/// end), by `cachestat` (Linux 6.5+); None where the kernel lacks it.
pub fn cachestat(file: &File, off: u64, len: u64) -> Option<u64> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off, len };
    let mut stat = Stat::default();
    // SAFETY: both structs live across the call and have the kernel's layout.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0,
        )
    };
    (r == 0).then_some(stat.nr_cache)
}

/// Pages `[first, first + n)` of the file into `out`.
fn cached_window(
    file: &File,
    first: usize,
    n: usize,
    pagemap: &Pagemap,
    out: &mut CachedPages,
) -> std::io::Result<()> {
    let map_len = n * PAGE_SIZE;
    // SAFETY: a fresh read-only shared mapping of a file we opened; checked for failure.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            (first * PAGE_SIZE) as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let mapping = Mapping { addr, len: map_len };
    // No readahead: a fault on a cached page would otherwise start reading its neighbours
    // from disk.
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(mapping.addr, map_len, libc::MADV_RANDOM) };
    let mut resident = vec![0u8; n];
    // SAFETY: `resident` has one byte per page of the mapping, as mincore requires.
    if unsafe { libc::mincore(mapping.addr, map_len, resident.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let cached: Vec<usize> = (0..n).filter(|&i| resident[i] & 1 == 1).collect();
    if cached.is_empty() {
        return Ok(());
    }
    for (a, b) in runs(&cached) {
        // Enters the run's cached pages into our page tables; a page evicted since
        // mincore would be read back in, so a run is populated only while all of it is
        // still cached (checked again just before). Errors (a file truncated meanwhile)
        // cost the run: those pages stay without a PFN.
        let run = (mapping.addr as usize + a * PAGE_SIZE) as *mut libc::c_void;
        let mut still = vec![0u8; b - a];
        // SAFETY: the run lies inside the mapping; `still` has one byte per page of it.
        let ok = unsafe { libc::mincore(run, (b - a) * PAGE_SIZE, still.as_mut_ptr()) } == 0;
        if ok && still.iter().all(|&r| r & 1 == 1) {
            // SAFETY: the run lies inside our own mapping.
            unsafe { libc::madvise(run, (b - a) * PAGE_SIZE, libc::MADV_POPULATE_READ) };
        }
    }
    let mut pfn_of = vec![0u64; n];
    pagemap
        .for_each_mapped(
            mapping.addr as u64,
            mapping.addr as u64 + map_len as u64,
            |va, e| {
                if let Some(pfn) = e.pfn() {
                    pfn_of[((va - mapping.addr as u64) / PAGE_SIZE as u64) as usize] = pfn;
                }
            },
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let with_pfn: Vec<usize> = cached.into_iter().filter(|&i| pfn_of[i] != 0).collect();
    let tasks = with_pfn
        .iter()
        .enumerate()
        .map(|(k, &i)| ReadTask {
            addr: mapping.addr as u64 + (i * PAGE_SIZE) as u64,
            stream: 0,
            slot: k as u32,
        })
        .collect();
    let plan = ReadPlan::new(tasks, with_pfn.len()).map_err(std::io::Error::other)?;
    let mut hashes = vec![[0u8; 16]; with_pfn.len()];
    let mut hashed = vec![false; with_pfn.len()];
    read_and_hash(&OwnMapping, &plan, &mut hashes, &mut hashed, &|_| Ok(()))
        .map_err(|e: ScanError| std::io::Error::other(e.to_string()))?;
    drop(mapping);
    for ((&i, h), ok) in with_pfn.iter().zip(hashes).zip(hashed) {
        if ok {
            out.pages.push(((first + i) as u64, pfn_of[i], h));
        } else {
            out.vanished += 1;
        }
    }
    Ok(())
}

/// Runs of consecutive indices in sorted `idx`, as [start, end).
fn runs(idx: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &i in idx {
        match out.last_mut() {
            Some(r) if r.1 == i => r.1 = i + 1,
            _ => out.push((i, i + 1)),
        }
    }
    out
}

/// Our own mapping of the file, read with `process_vm_readv` on ourselves: the pages are
/// already in our page tables, so reading starts no readahead (a read() of a page marked
/// for readahead would), and a page truncated away meanwhile fails the read (EFAULT)
/// instead of raising SIGBUS. Addresses are our own virtual addresses.
struct OwnMapping;

impl PageSource for OwnMapping {
    type Stream = ();
    type Error = ScanError;

    fn window_shape(&self) -> WindowShape {
        WindowShape {
            pages: 256,
            span: u64::MAX,
        }
    }

    fn open_stream(&self, _stream: u32) -> Result<()> {
        Ok(())
    }

    fn read_window(
        &self,
        _stream: &(),
        addrs: &[u64],
        _slots: &[u32],
        buf: &mut [u8],
        ok: &mut Vec<bool>,
    ) -> Result<()> {
        ok.clear();
        for (&at, page) in addrs.iter().zip(buf.chunks_exact_mut(PAGE_SIZE)) {
            let local = libc::iovec {
                iov_base: page.as_mut_ptr() as *mut libc::c_void,
                iov_len: PAGE_SIZE,
            };
            let remote = libc::iovec {
                iov_base: at as *mut libc::c_void,
                iov_len: PAGE_SIZE,
            };
            // SAFETY: one local iovec over `page`, which we own mutably; the remote side
            // is our own address space, checked by the kernel.
            let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
            ok.push(n == PAGE_SIZE as isize);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_hash::hash_page;
    use std::io::Write;

    #[test]
    fn finds_cached_pages_with_their_content() {
        let path = std::env::temp_dir().join(format!("dedupx-cache-{}", std::process::id()));
        let mut f = File::create(&path).expect("create");
        for b in 0..8u8 {
            f.write_all(&[b + 1; PAGE_SIZE]).expect("write");
        }
        f.sync_all().expect("sync");
        drop(f);
        // Just written: all cached. The pages are found with their PFNs and hashes.
        let c = cached_pages(&path, Path::new("/proc")).expect("reads");
        assert_eq!(c.file_pages, 8);
        assert_eq!(c.pages.len(), 8);
        for (i, pfn, h) in &c.pages {
            assert!(*pfn > 0);
            assert_eq!(*h, hash_page(&[*i as u8 + 1; PAGE_SIZE]));
        }
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn a_sparse_file_is_examined_only_where_cached() {
        use std::os::unix::fs::FileExt;
        let path = std::env::temp_dir().join(format!("dedupx-sparse-{}", std::process::id()));
        let f = File::create(&path).expect("create");
        // 8 TiB of holes (2^31 pages) with a page written at each end: both cached.
        if f.set_len(8 << 40).is_err() {
            std::fs::remove_file(&path).ok();
            return; // this filesystem holds no such file; nothing to show
        }
        f.write_all_at(&[1; PAGE_SIZE], 0).expect("write");
        f.write_all_at(&[2; PAGE_SIZE], (8 << 40) - PAGE_SIZE as u64)
            .expect("write");
        drop(f);
        let file = open_for_cache(&path).expect("open");
        let c = cached_pages_of(
            &file,
            &path,
            &Pagemap::open(Path::new("/proc"), std::process::id()).expect("pagemap"),
        )
        .expect("reads");
        std::fs::remove_file(&path).ok();
        assert_eq!(c.file_pages, 1 << 31);
        let found: Vec<u64> = c.pages.iter().map(|p| p.0).collect();
        assert_eq!(found, vec![0, (1 << 31) - 1]);
        if cachestat(&file, 0, 0).is_some() {
            // One window at each end, not 8,192.
            assert_eq!(c.windows_examined, 2);
        }
    }
}
