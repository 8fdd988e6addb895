//! Swapped-out pages, read where the kernel wrote them: the swap area (a file, a partition
//! or zram, which decompresses on read) at the slot the target's pagemap names. Reading the
//! area never swaps a page back in: the target's page tables and the swap cache are left
//! alone, and reads bypass the page cache (`O_DIRECT`), whose copy of a swap file would be
//! stale (the kernel writes swap straight to the blocks).
//!
//! Where zswap is on, a swapped page may sit compressed in its pool rather than in the
//! area, and nothing tells which: then no slot is read, and the pages count as unhashed.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::page_source::{PageSource, WindowShape};
use crate::proc_escape::unescape_octal;
use crate::PAGE_SIZE;

/// A swap slot's key in the frames' `pfn` column: above every real PFN (those fit in 55
/// bits), the swap type in bits 50-54 and the slot's page offset below.
pub const SWAP_FRAME: u64 = 1 << 63;
const OFFSET_BITS: u32 = 50;

pub fn slot_key(swap_type: u32, offset: u64) -> Option<u64> {
    (swap_type < 32 && offset < (1 << OFFSET_BITS))
        .then_some(SWAP_FRAME | (u64::from(swap_type) << OFFSET_BITS) | offset)
}

pub fn key_slot(key: u64) -> (u32, u64) {
    (
        ((key >> OFFSET_BITS) & 0x1f) as u32,
        key & ((1 << OFFSET_BITS) - 1),
    )
}

/// One swap area as /proc/swaps lists it.
#[derive(Debug)]
pub struct SwapArea {
    pub path: PathBuf,
    pub kind: String,
    pub pages: u64,
    file: Option<File>,
    /// Why its slots are not read, if they are not.
    pub unreadable: Option<String>,
}

/// The host's swap areas, by swap type.
#[derive(Debug, Default)]
pub struct SwapAreas {
    pub areas: Vec<SwapArea>,
    /// zswap is on or holds pages: no slot is read.
    pub zswap: bool,
}

impl SwapAreas {
    /// The areas in `proc_root/swaps`, opened for reading. The swap type of an area is its
    /// position in that list: the kernel lists areas by type, and types are given out
    /// from 0, so they match unless an earlier area was removed while a later one stayed
    /// (then a slot whose offset lies past its area's end is left unread).
    pub fn open(proc_root: &Path, sys_root: &Path) -> Self {
        let text = fs::read_to_string(proc_root.join("swaps")).unwrap_or_default();
        let zswap = zswap_in_use(sys_root);
        let areas = parse_swaps(&text)
            .into_iter()
            .map(|(path, kind, kib)| {
                let (file, unreadable) = if zswap {
                    (None, Some("zswap may hold its pages".to_string()))
                } else {
                    match open_direct(&path) {
                        Ok(f) => (Some(f), None),
                        Err(e) => (None, Some(format!("cannot read {}: {e}", path.display()))),
                    }
                };
                SwapArea {
                    path,
                    kind,
                    pages: kib / (PAGE_SIZE as u64 / 1024),
                    file,
                    unreadable,
                }
            })
            .collect();
        Self { areas, zswap }
    }

    /// Whether the slot can be read: its area exists, is readable and holds the offset
    /// (offset 0 is the area's header, never a page).
    pub fn readable(&self, swap_type: u32, offset: u64) -> bool {
        self.areas
            .get(swap_type as usize)
            .is_some_and(|a| a.file.is_some() && offset > 0 && offset < a.pages)
    }
}

fn zswap_in_use(sys_root: &Path) -> bool {
    let on = fs::read_to_string(sys_root.join("module/zswap/parameters/enabled"))
        .is_ok_and(|s| s.trim() == "Y");
    let stored = fs::read_to_string(sys_root.join("kernel/debug/zswap/stored_pages"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    on || stored > 0
}

fn open_direct(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_NOATIME)
        .open(path)
        .or_else(|_| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
        })
}

/// (path, type, size in KiB) per line of /proc/swaps after its header. The kernel escapes
/// spaces, tabs, newlines and backslashes in the path as octal (`\040`), and marks a
/// removed swap file " (deleted)".
pub fn parse_swaps(text: &str) -> Vec<(PathBuf, String, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let path = unescape_octal(words.next()?);
            let kind = words.next()?.to_string();
            let kib = words.next()?.parse().ok()?;
            Some((PathBuf::from(path), kind, kib))
        })
        .collect()
}

/// A page-aligned buffer, as `O_DIRECT` reads need.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(bytes: usize) -> Self {
        let layout = Layout::from_size_align(bytes.max(PAGE_SIZE), PAGE_SIZE).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory for a swap read buffer");
        Self { ptr, layout }
    }

    fn bytes(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: `ptr` holds `layout.size()` initialised bytes, borrowed mutably once.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len.min(self.layout.size())) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// Pages per window: runs of consecutive slots are read by one call.
const WINDOW_PAGES: usize = 256;

impl PageSource for SwapAreas {
    /// A stream is a swap type; addresses are byte offsets in the area.
    type Stream = u32;
    type Error = crate::error::ScanError;

    fn window_shape(&self) -> WindowShape {
        WindowShape {
            pages: WINDOW_PAGES,
            span: u64::MAX,
        }
    }

    fn open_stream(&self, stream: u32) -> crate::Result<u32> {
        Ok(stream)
    }

    fn read_window(
        &self,
        &swap_type: &u32,
        addrs: &[u64],
        _slots: &[u32],
        buf: &mut [u8],
        ok: &mut Vec<bool>,
    ) -> crate::Result<()> {
        ok.clear();
        ok.resize(addrs.len(), false);
        let Some(file) = self
            .areas
            .get(swap_type as usize)
            .and_then(|a| a.file.as_ref())
        else {
            return Ok(());
        };
        let mut bounce = Aligned::new(addrs.len() * PAGE_SIZE);
        let mut i = 0;
        while i < addrs.len() {
            let mut j = i + 1;
            while j < addrs.len() && addrs[j] == addrs[j - 1] + PAGE_SIZE as u64 {
                j += 1;
            }
            let run = bounce.bytes((j - i) * PAGE_SIZE);
            if read_full(file, run, addrs[i]) {
                buf[i * PAGE_SIZE..j * PAGE_SIZE].copy_from_slice(run);
                ok[i..j].fill(true);
            } else {
                // One bad block loses only its page.
                for k in i..j {
                    let page = bounce.bytes(PAGE_SIZE);
                    if read_full(file, page, addrs[k]) {
                        buf[k * PAGE_SIZE..(k + 1) * PAGE_SIZE].copy_from_slice(page);
                        ok[k] = true;
                    }
                }
            }
            i = j;
        }
        Ok(())
    }
}

fn read_full(file: &File, buf: &mut [u8], at: u64) -> bool {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => return false,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_swaps() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                    /swap\\040file\tfile\t\t262140\t\t0\t\t-2\n\
                    /dev/zram0  partition  1024  0  100\n";
        let areas = parse_swaps(text);
        assert_eq!(areas.len(), 2);
        assert_eq!(
            areas[0],
            (PathBuf::from("/swap file"), "file".into(), 262140)
        );
        assert_eq!(areas[1].1, "partition");
    }

    #[test]
    fn slot_keys_round_trip_and_sit_above_pfns() {
        let k = slot_key(3, 12345).expect("in range");
        assert!(k > (1 << 55));
        assert_eq!(key_slot(k), (3, 12345));
        assert_eq!(slot_key(32, 1), None);
    }

    #[test]
    fn reads_a_file_as_an_area() {
        let dir = std::env::temp_dir().join(format!("dedupx-swap-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("test setup");
        let path = dir.join("area");
        let mut data = vec![0u8; 4 * PAGE_SIZE];
        for (i, page) in data.chunks_exact_mut(PAGE_SIZE).enumerate() {
            page.fill(i as u8 + 1);
        }
        fs::write(&path, &data).expect("test setup");
        let areas = SwapAreas {
            areas: vec![SwapArea {
                path: path.clone(),
                kind: "file".into(),
                pages: 4,
                file: open_direct(&path).ok(),
                unreadable: None,
            }],
            zswap: false,
        };
        let mut buf = vec![0u8; 3 * PAGE_SIZE];
        let mut ok = Vec::new();
        let addrs = [PAGE_SIZE as u64, 2 * PAGE_SIZE as u64, 9 * PAGE_SIZE as u64];
        areas
            .read_window(&0, &addrs, &[0, 1, 2], &mut buf, &mut ok)
            .expect("test setup");
        assert_eq!(ok, vec![true, true, false]);
        assert!(buf[..PAGE_SIZE].iter().all(|&b| b == 2));
        assert!(buf[PAGE_SIZE..2 * PAGE_SIZE].iter().all(|&b| b == 3));
        assert!(areas.readable(0, 3) && !areas.readable(0, 0) && !areas.readable(1, 1));
        fs::remove_dir_all(&dir).expect("test setup");
    }
}
