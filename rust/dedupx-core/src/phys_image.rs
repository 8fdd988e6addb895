//! Physical memory as a set of page-aligned segments in a file: memory images (raw, ELF
//! core, LiME) and live sources (/proc/kcore, /dev/crash, /dev/mem). One reader and one
//! hashing path serve them all; the analyses never care which filled a frame.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rayon::prelude::*;

use crate::bitmap::BitVec;
use crate::elf_core::{self, ElfError};
use crate::lime::{self, LimeError};
use crate::page_hash::{PageHash, PageHasher};
use crate::PAGE_SIZE;

const PAGE: u64 = PAGE_SIZE as u64;
/// Pages read by one pread and hashed while hot in cache.
const CHUNK_PAGES: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Elf,
    Lime,
    Kcore,
    DevMem,
    DevCrash,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Elf => "elf",
            ImageFormat::Lime => "lime",
            ImageFormat::Kcore => "kcore",
            ImageFormat::DevMem => "devmem",
            ImageFormat::DevCrash => "crash",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "raw" => ImageFormat::Raw,
            "elf" => ImageFormat::Elf,
            "lime" => ImageFormat::Lime,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is truncated: {detail}")]
    Truncated { path: PathBuf, detail: String },
    #[error("{path} is not a valid {format} image: {detail}")]
    BadFormat {
        path: PathBuf,
        format: &'static str,
        detail: String,
    },
    #[error("{path} has overlapping memory ranges at physical address {paddr:#x}")]
    Overlap { path: PathBuf, paddr: u64 },
    #[error("{path} is not page-aligned: {detail}")]
    Misaligned { path: PathBuf, detail: String },
    #[error("{path} holds no memory")]
    Empty { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("interrupted")]
    Interrupted,
}

/// `len` bytes of physical memory from `paddr`, stored at `offset` in the file; past
/// `stored` bytes (ELF `p_filesz` < `p_memsz`) the segment reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub len: u64,
    pub offset: u64,
    pub stored: u64,
}

pub struct PhysImage {
    file: File,
    path: PathBuf,
    pub format: ImageFormat,
    pub segments: Vec<Segment>,
    /// Byte ranges of the file that hold data; the rest are holes that read as zeros.
    data_extents: Option<Vec<(u64, u64)>>,
}

/// One row per physical page of an image: pfn, hash (16 bytes each), zero.
#[derive(Debug, Default)]
pub struct FrameTable {
    pub pfn: Vec<u64>,
    pub hashes: Vec<u8>,
    pub zero: BitVec,
}

impl PhysImage {
    /// Opens a memory image, detecting its format by magic unless `format` is given.
    pub fn open(path: &Path, format: Option<ImageFormat>) -> Result<Self, ImageError> {
        let file = File::open(path).map_err(|source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let io_err = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut magic = [0u8; 4];
        let n = file.read_at(&mut magic, 0).map_err(io_err)?;
        let format = format.unwrap_or(if elf_core::is_elf(&magic[..n]) {
            ImageFormat::Elf
        } else if lime::is_lime(&magic[..n]) {
            ImageFormat::Lime
        } else {
            ImageFormat::Raw
        });
        let bad = |detail: String| ImageError::BadFormat {
            path: path.to_path_buf(),
            format: format.as_str(),
            detail,
        };
        let segments = match format {
            ImageFormat::Raw => {
                if file_len % PAGE != 0 {
                    return Err(ImageError::Misaligned {
                        path: path.to_path_buf(),
                        detail: format!("size {file_len} is not a multiple of {PAGE}"),
                    });
                }
                vec![Segment {
                    paddr: 0,
                    len: file_len,
                    offset: 0,
                    stored: file_len,
                }]
            }
            ImageFormat::Elf | ImageFormat::Kcore => {
                let loads = elf_core::read_load_segments(&file, file_len).map_err(|e| match e {
                    ElfError::Truncated => ImageError::Truncated {
                        path: path.to_path_buf(),
                        detail: e.to_string(),
                    },
                    _ => bad(e.to_string()),
                })?;
                loads
                    .iter()
                    .filter(|l| l.memsz > 0)
                    .map(|l| Segment {
                        paddr: l.paddr,
                        len: l.memsz,
                        offset: l.offset,
                        stored: l.filesz.min(l.memsz),
                    })
                    .collect()
            }
            ImageFormat::Lime => lime::read_ranges(&file, file_len)
                .map_err(|e| match e {
                    LimeError::Truncated { .. } => ImageError::Truncated {
                        path: path.to_path_buf(),
                        detail: e.to_string(),
                    },
                    _ => bad(e.to_string()),
                })?
                .into_iter()
                .map(|r| Segment {
                    paddr: r.paddr,
                    len: r.len,
                    offset: r.offset,
                    stored: r.len,
                })
                .collect(),
            ImageFormat::DevMem | ImageFormat::DevCrash => Vec::new(),
        };
        // kcore also lists vmalloc and module areas, whose p_paddr means nothing; it is
        // checked after open_kcore keeps only what lies in System RAM.
        let segments = if format == ImageFormat::Kcore {
            segments
        } else {
            validate(path, segments, file_len)?
        };
        let data_extents = data_extents(&file, file_len);
        Ok(Self {
            file,
            path: path.to_path_buf(),
            format,
            segments,
            data_extents,
        })
    }

    /// A live source read at physical offsets (/dev/mem, /dev/crash), limited to `ram`.
    pub fn open_identity(
        path: &Path,
        format: ImageFormat,
        ram: &[(u64, u64)],
    ) -> Result<Self, ImageError> {
        let file = File::open(path).map_err(|source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let segments = ram
            .iter()
            .map(|&(a, b)| (a.div_ceil(PAGE) * PAGE, b / PAGE * PAGE))
            .filter(|(a, b)| b > a)
            .map(|(a, b)| Segment {
                paddr: a,
                len: b - a,
                offset: a,
                stored: b - a,
            })
            .collect();
        Ok(Self {
            file,
            path: path.to_path_buf(),
            format,
            segments,
            data_extents: None,
        })
    }

    /// /proc/kcore: an ELF core whose direct-map segments carry physical addresses in
    /// `p_paddr` (others carry garbage there); only the parts inside System RAM count.
    pub fn open_kcore(path: &Path, ram: &[(u64, u64)]) -> Result<Self, ImageError> {
        let mut img = Self::open(path, Some(ImageFormat::Kcore))?;
        let mut segs = Vec::new();
        for s in &img.segments {
            for &(a, b) in ram {
                let (lo, hi) = (s.paddr.max(a), s.paddr.saturating_add(s.len).min(b));
                if hi <= lo {
                    continue;
                }
                let (lo, hi) = (lo.div_ceil(PAGE) * PAGE, hi / PAGE * PAGE);
                if hi > lo {
                    let skip = lo - s.paddr;
                    segs.push(Segment {
                        paddr: lo,
                        len: hi - lo,
                        offset: s.offset + skip,
                        stored: s.stored.saturating_sub(skip).min(hi - lo),
                    });
                }
            }
        }
        segs.sort_by_key(|s| s.paddr);
        segs.dedup_by(|b, a| b.paddr < a.paddr + a.len); // kcore may list RAM twice
        img.segments = segs;
        img.data_extents = None;
        Ok(img)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pages(&self) -> u64 {
        self.segments.iter().map(|s| s.len / PAGE).sum()
    }

    /// Reads the page at physical page number `pfn` into `buf`; false if no segment holds it.
    pub fn read_page(&self, pfn: u64, buf: &mut [u8]) -> io::Result<bool> {
        let paddr = pfn * PAGE;
        let idx = self.segments.partition_point(|s| s.paddr + s.len <= paddr);
        match self.segments.get(idx) {
            Some(s) if s.paddr <= paddr => {
                self.read_into(s, paddr - s.paddr, buf)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Fills `buf` with the segment's bytes from `at`, zeros where nothing is stored.
    fn read_into(&self, s: &Segment, at: u64, buf: &mut [u8]) -> io::Result<()> {
        let stored = s.stored.saturating_sub(at).min(buf.len() as u64) as usize;
        let (data, zeros) = buf.split_at_mut(stored);
        zeros.fill(0);
        if !data.is_empty() {
            let off = s.offset + at;
            if self.is_hole(off, data.len() as u64) {
                data.fill(0);
            } else {
                self.file.read_exact_at(data, off)?;
            }
        }
        Ok(())
    }

    fn is_hole(&self, off: u64, len: u64) -> bool {
        self.data_extents.as_ref().is_some_and(|ext| {
            let i = ext.partition_point(|&(_, end)| end <= off);
            ext.get(i).is_none_or(|&(start, _)| start >= off + len)
        })
    }

    /// Reads and hashes every page, in parallel; `progress(done, total)` may stop it.
    pub fn hash_frames(
        &self,
        progress: &(dyn Fn(u64, u64) -> bool + Sync),
    ) -> Result<FrameTable, ImageError> {
        let total = self.pages();
        let mut t = FrameTable {
            pfn: Vec::with_capacity(total as usize),
            hashes: vec![0u8; total as usize * 16],
            zero: BitVec::with_capacity(total as usize),
        };
        let mut zero = vec![false; total as usize];
        let done = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let mut row = 0usize;
        for s in &self.segments {
            let n = (s.len / PAGE) as usize;
            t.pfn.extend((0..n as u64).map(|i| s.paddr / PAGE + i));
            let chunk = CHUNK_PAGES as usize;
            t.hashes[row * 16..(row + n) * 16]
                .par_chunks_mut(chunk * 16)
                .zip(zero[row..row + n].par_chunks_mut(chunk))
                .enumerate()
                .try_for_each_init(
                    || (PageHasher::new(), vec![0u8; chunk * PAGE_SIZE], Vec::new()),
                    |(hasher, buf, out), (c, (hashes, zeros))| {
                        if stop.load(Ordering::Relaxed) {
                            return Err(ImageError::Interrupted);
                        }
                        let pages = zeros.len();
                        let data = &mut buf[..pages * PAGE_SIZE];
                        self.read_into(s, c as u64 * CHUNK_PAGES * PAGE, data)
                            .map_err(|source| ImageError::Io {
                                path: self.path.clone(),
                                source,
                            })?;
                        let refs: Vec<&[u8]> = data.chunks_exact(PAGE_SIZE).collect();
                        hasher.hash_or_zero(&refs, out);
                        for (i, (h, z)) in out.iter().enumerate() {
                            hashes[i * 16..(i + 1) * 16].copy_from_slice(h);
                            zeros[i] = *z;
                        }
                        let d = done.fetch_add(pages as u64, Ordering::Relaxed) + pages as u64;
                        if progress(d, total) {
                            Ok(())
                        } else {
                            stop.store(true, Ordering::Relaxed);
                            Err(ImageError::Interrupted)
                        }
                    },
                )?;
            row += n;
        }
        t.zero = zero.into_iter().collect();
        Ok(t)
    }
}

/// The first readable live source of physical memory, in the order acquisition tools try
/// them: /proc/kcore, /dev/crash, /dev/mem. Each is probed by reading a page of System RAM
/// above 1 MiB (STRICT_DEVMEM kernels refuse that for /dev/mem). Returns the source, or
/// None with one line per source saying why it was not used.
pub fn open_live(
    proc_root: &Path,
    dev_root: &Path,
    ram: &[(u64, u64)],
) -> (Option<PhysImage>, Vec<String>) {
    let mut why = Vec::new();
    let probe_pfn = ram
        .iter()
        .map(|&(a, b)| (a.max(1 << 20).div_ceil(PAGE), b / PAGE))
        .find(|(a, b)| a < b)
        .map(|(a, _)| a);
    let candidates: [(PathBuf, ImageFormat); 3] = [
        (proc_root.join("kcore"), ImageFormat::Kcore),
        (dev_root.join("crash"), ImageFormat::DevCrash),
        (dev_root.join("mem"), ImageFormat::DevMem),
    ];
    for (path, format) in candidates {
        let opened = match format {
            ImageFormat::Kcore => PhysImage::open_kcore(&path, ram),
            _ => PhysImage::open_identity(&path, format, ram),
        };
        let img = match opened {
            Ok(img) => img,
            Err(e) => {
                why.push(e.to_string());
                continue;
            }
        };
        let mut page = vec![0u8; PAGE_SIZE];
        match probe_pfn.map(|pfn| img.read_page(pfn, &mut page)) {
            Some(Ok(true)) => return (Some(img), why),
            Some(Ok(false)) => why.push(format!("{} does not cover System RAM", path.display())),
            Some(Err(e)) => why.push(format!("cannot read {}: {e}", path.display())),
            None => why.push("no System RAM above 1 MiB in iomem".to_string()),
        }
    }
    (None, why)
}

impl FrameTable {
    pub fn len(&self) -> usize {
        self.pfn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pfn.is_empty()
    }

    pub fn hash(&self, row: usize) -> PageHash {
        let mut h = [0u8; 16];
        h.copy_from_slice(&self.hashes[row * 16..][..16]);
        h
    }
}

/// Sorts segments and refuses what would make frames ambiguous or unreadable.
fn validate(
    path: &Path,
    mut segs: Vec<Segment>,
    file_len: u64,
) -> Result<Vec<Segment>, ImageError> {
    for s in &segs {
        if s.paddr % PAGE != 0 || s.len % PAGE != 0 {
            return Err(ImageError::Misaligned {
                path: path.to_path_buf(),
                detail: format!(
                    "range at physical {:#x} of {} bytes does not start and end on a page",
                    s.paddr, s.len
                ),
            });
        }
        if s.offset
            .checked_add(s.stored)
            .is_none_or(|end| end > file_len)
        {
            return Err(ImageError::Truncated {
                path: path.to_path_buf(),
                detail: format!(
                    "range at physical {:#x} needs bytes up to {} but the file has {file_len}",
                    s.paddr,
                    s.offset.saturating_add(s.stored)
                ),
            });
        }
    }
    segs.sort_by_key(|s| s.paddr);
    for w in segs.windows(2) {
        if w[1].paddr < w[0].paddr + w[0].len {
            return Err(ImageError::Overlap {
                path: path.to_path_buf(),
                paddr: w[1].paddr,
            });
        }
    }
    if segs.iter().all(|s| s.len == 0) {
        return Err(ImageError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(segs)
}

/// Data extents of a sparse file (SEEK_DATA/SEEK_HOLE), or None where unsupported.
fn data_extents(file: &File, len: u64) -> Option<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on a file descriptor we own; it only moves our own file offset.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            // ENXIO: no data after pos (a trailing hole); anything else: not supported.
            return (io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO)).then_some(out);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return None;
        }
        out.push((data as u64, hole as u64));
        pos = hole;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf_core::{build_core_header, LoadSegment};
    use crate::page_hash::{hash_page, zero_page_hash};
    use std::io::Write;

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; PAGE_SIZE]
    }

    fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("dedupx-{}-{name}", std::process::id()));
        let mut f = File::create(&path).expect("create");
        f.write_all(bytes).expect("write");
        path
    }

    fn frames(path: &Path, format: Option<ImageFormat>) -> Result<FrameTable, ImageError> {
        PhysImage::open(path, format)?.hash_frames(&|_, _| true)
    }

    /// A file laid out like /proc/kcore: a direct-map segment whose p_vaddr is a kernel
    /// virtual address and whose p_paddr is physical, a vmalloc segment with p_paddr
    /// all-ones, and a System RAM map that covers only part of the direct map.
    #[test]
    fn kcore_layout_keeps_only_system_ram_by_physical_address() {
        let header_len = 4096u64;
        let direct = LoadSegment {
            vaddr: 0xffff_8880_0000_0000,
            paddr: 0,
            offset: header_len,
            filesz: 4 * PAGE,
            memsz: 4 * PAGE,
        };
        let vmalloc = LoadSegment {
            vaddr: 0xffff_c900_0000_0000,
            paddr: u64::MAX,
            offset: header_len + 4 * PAGE,
            filesz: PAGE,
            memsz: PAGE,
        };
        let mut bytes = build_core_header(&[direct, vmalloc]);
        bytes.resize(header_len as usize, 0);
        for b in [1u8, 2, 3, 0] {
            bytes.extend(page(b));
        }
        bytes.extend(page(9)); // vmalloc page: never a frame
        let path = write_temp("kcore", &bytes);
        // RAM: physical pages 1 and 2 only (page 0 and 3 are reserved).
        let ram = [(PAGE, 3 * PAGE)];
        let img = PhysImage::open_kcore(&path, &ram).expect("opens");
        assert_eq!(
            img.segments,
            vec![Segment {
                paddr: PAGE,
                len: 2 * PAGE,
                offset: header_len + PAGE,
                stored: 2 * PAGE
            }]
        );
        let t = img.hash_frames(&|_, _| true).expect("hashes");
        assert_eq!(t.pfn, vec![1, 2]);
        assert_eq!(t.hash(0), hash_page(&page(2)));
        assert_eq!(t.hash(1), hash_page(&page(3)));
        let mut buf = page(0);
        assert!(img.read_page(2, &mut buf).expect("reads"));
        assert_eq!(buf, page(3));
        assert!(!img.read_page(0, &mut buf).expect("reads"));
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn elf_with_memsz_beyond_filesz_reads_zeros() {
        let seg = LoadSegment {
            vaddr: 0,
            paddr: 0x10_0000,
            offset: 4096,
            filesz: PAGE,
            memsz: 3 * PAGE,
        };
        let mut bytes = build_core_header(&[seg]);
        bytes.resize(4096, 0);
        bytes.extend(page(7));
        let path = write_temp("elf-memsz", &bytes);
        let t = frames(&path, None).expect("hashes");
        assert_eq!(t.pfn, vec![0x100, 0x101, 0x102]);
        assert_eq!(t.hash(0), hash_page(&page(7)));
        assert_eq!(t.hash(2), zero_page_hash());
        assert!(!t.zero.get(0) && t.zero.get(1) && t.zero.get(2));
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn sparse_raw_holes_are_zero_pages() {
        let path = std::env::temp_dir().join(format!("dedupx-{}-sparse", std::process::id()));
        let f = File::create(&path).expect("create");
        f.set_len(1024 * PAGE).expect("sparse size");
        f.write_all_at(&page(5), 700 * PAGE).expect("write");
        drop(f);
        let img = PhysImage::open(&path, None).expect("opens");
        assert_eq!(img.format, ImageFormat::Raw);
        assert!(img.is_hole(0, PAGE));
        let t = img.hash_frames(&|_, _| true).expect("hashes");
        assert_eq!(t.len(), 1024);
        assert_eq!(t.zero.count_ones(), 1023);
        assert_eq!(t.hash(700), hash_page(&page(5)));
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn refuses_overlap_misalignment_and_truncation() {
        let a = LoadSegment {
            vaddr: 0,
            paddr: 0,
            offset: 4096,
            filesz: 2 * PAGE,
            memsz: 2 * PAGE,
        };
        let b = LoadSegment {
            paddr: PAGE,
            offset: 4096,
            ..a
        };
        let mut bytes = build_core_header(&[a, b]);
        bytes.resize(4096 + 2 * PAGE as usize, 1);
        let path = write_temp("overlap", &bytes);
        assert!(matches!(
            frames(&path, None),
            Err(ImageError::Overlap { paddr: 4096, .. })
        ));
        let c = LoadSegment { paddr: 100, ..a };
        let mut bytes = build_core_header(&[c]);
        bytes.resize(4096 + 2 * PAGE as usize, 1);
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            frames(&path, None),
            Err(ImageError::Misaligned { .. })
        ));
        let mut bytes = build_core_header(&[a]);
        bytes.resize(4096 + PAGE as usize, 1);
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            frames(&path, None),
            Err(ImageError::Truncated { .. })
        ));
        std::fs::write(&path, vec![0u8; 5000]).expect("write");
        assert!(matches!(
            frames(&path, None),
            Err(ImageError::Misaligned { .. })
        ));
        std::fs::remove_file(path).ok();
    }
}
