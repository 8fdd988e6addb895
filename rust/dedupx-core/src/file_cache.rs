//! Page-cache pages of files no process maps (a guest's disk image read through the host
//! page cache, say), found without /proc/kcore: the file is mapped read-only into our own
//! address space, `mincore` tells which pages are cached, and only those are touched, so
//! each touch maps the cached page (a minor fault, no I/O) and our own pagemap gives its
//! PFN. Unlike a guest's pages these are the host's page cache: the touch marks them
//! accessed, which is the price of seeing them at all.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Result, ScanError};
use crate::page_hash::PageHash;
use crate::page_source::{PageSource, WindowShape};
use crate::pagemap::{Pagemap, PagemapEntry};
use crate::read_and_hash::read_and_hash;
use crate::read_plan::{ReadPlan, ReadTask};
use crate::PAGE_SIZE;

/// The cached pages of one file: (page index in the file, PFN, hash).
#[derive(Debug, Default)]
pub struct CachedPages {
    pub path: PathBuf,
    pub pages: Vec<(u64, u64, PageHash)>,
    /// Pages of the file in all, cached or not.
    pub file_pages: u64,
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

pub fn cached_pages(path: &Path, proc_root: &Path) -> Result<CachedPages> {
    let io = |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len() as usize;
    let pages = len / PAGE_SIZE; // a partial last page is left out: it is not a whole page
    let mut out = CachedPages {
        path: path.to_path_buf(),
        file_pages: pages as u64,
        ..Default::default()
    };
    if pages == 0 {
        return Ok(out);
    }
    let map_len = pages * PAGE_SIZE;
    // SAFETY: a fresh read-only shared mapping of a file we opened; checked for failure.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io(std::io::Error::last_os_error()));
    }
    let mapping = Mapping { addr, len: map_len };
    let mut resident = vec![0u8; pages];
    // SAFETY: `resident` has one byte per page of the mapping, as mincore requires.
    if unsafe { libc::mincore(mapping.addr, map_len, resident.as_mut_ptr()) } != 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    // SAFETY: the mapping is `map_len` readable bytes and lives until `mapping` drops.
    let bytes = unsafe { std::slice::from_raw_parts(mapping.addr as *const u8, map_len) };
    let cached: Vec<usize> = (0..pages).filter(|&i| resident[i] & 1 == 1).collect();
    for &i in &cached {
        // A read of a resident page maps it; volatile so that it is not optimised away.
        // SAFETY: i < pages, so the byte lies inside the mapping.
        unsafe { std::ptr::read_volatile(bytes.as_ptr().add(i * PAGE_SIZE)) };
    }
    let pagemap = Pagemap::open(proc_root, std::process::id())?;
    let mut entries = Vec::new();
    pagemap.read_range(mapping.addr as u64, pages, &mut entries)?;
    let tasks = cached
        .iter()
        .enumerate()
        .map(|(k, &i)| ReadTask {
            addr: (i * PAGE_SIZE) as u64,
            stream: 0,
            slot: k as u32,
        })
        .collect();
    let plan = ReadPlan::new(tasks, cached.len())?;
    let mut hashes = vec![[0u8; 16]; cached.len()];
    let mut hashed = vec![false; cached.len()];
    read_and_hash(
        &MappedFile { bytes },
        &plan,
        &mut hashes,
        &mut hashed,
        &|_| Ok(()),
    )?;
    for (&i, h) in cached.iter().zip(hashes) {
        // A page evicted between mincore and the touch was read back in from disk: still
        // the file's content, and now cached; keep it.
        if let Some(pfn) = PagemapEntry(entries[i]).pfn() {
            out.pages.push((i as u64, pfn, h));
        }
    }
    drop(mapping);
    Ok(out)
}

/// A file mapped into our own memory as a page source: addresses are file offsets.
struct MappedFile<'a> {
    bytes: &'a [u8],
}

impl PageSource for MappedFile<'_> {
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
        for (&at, page) in addrs.iter().zip(buf.chunks_exact_mut(PAGE_SIZE)) {
            page.copy_from_slice(&self.bytes[at as usize..][..PAGE_SIZE]);
        }
        ok.clear();
        ok.resize(addrs.len(), true);
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
}
