//! Physical memory as a set of page-aligned segments in a file: memory images (raw, ELF
//! core, LiME) and live sources (/proc/kcore, /dev/crash, /dev/mem). One reader serves them
//! all, as a [`PageSource`]; the analyses never care which filled a frame.
//!
//! Opening is elsewhere: images in [`crate::image_open`], live sources in
//! [`crate::live_memory`]; hashing every page in [`crate::image_frames`].

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::page_source::{PageSource, WindowShape};
use crate::parallel::ThreadPoolError;
use crate::read_plan::PlanError;
use crate::segments::Segment;
use crate::stages::Interrupted;
use crate::PAGE_SIZE;

pub(crate) const PAGE: u64 = PAGE_SIZE as u64;

/// Pages read by one pread and hashed while hot in cache.
const WINDOW: WindowShape = WindowShape {
    pages: 256,
    span: 256 * PAGE,
};

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
    /// Well-formed headers describing memory no machine has, or that would cost far more
    /// to analyse than the file holds: an address past the x86-64 physical limit, an
    /// address range that wraps around 2^64, or a zero-filled tail (ELF `p_memsz` beyond
    /// `p_filesz`) out of proportion to the file. Refused before anything is allocated.
    #[error("{path} is not a plausible memory image: {detail}")]
    Implausible { path: PathBuf, detail: String },
    /// The frame table (about 25 bytes per page) could not be allocated: reported rather
    /// than aborting the process. Sparse files can declare memory whose holes cost nothing
    /// on disk, so plausibility checks alone do not bound it.
    #[error("cannot allocate the frame table of {path}: {pages} pages need {bytes} bytes")]
    TooLarge {
        path: PathBuf,
        pages: u64,
        bytes: u64,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    ThreadPool(#[from] ThreadPoolError),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl From<Interrupted> for ImageError {
    fn from(_: Interrupted) -> Self {
        ImageError::Interrupted
    }
}

pub struct PhysImage {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub format: ImageFormat,
    pub segments: Vec<Segment>,
    /// Byte ranges of the file that hold data; the rest are holes that read as zeros.
    pub(crate) data_extents: Option<Vec<(u64, u64)>>,
}

impl PhysImage {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pages(&self) -> u64 {
        self.segments.iter().map(|s| s.len / PAGE).sum()
    }

    /// Reads the page at physical page number `pfn` into `buf`; false if no segment holds it.
    pub fn read_page(&self, pfn: u64, buf: &mut [u8]) -> io::Result<bool> {
        // A PFN past 2^52 (the address would wrap) lies in no segment.
        let Some(paddr) = pfn.checked_mul(PAGE) else {
            return Ok(false);
        };
        match self.segment_of(paddr) {
            Some(s) => {
                self.read_into(s, paddr - s.paddr, buf)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Fills `buf` with the segment's bytes from `at`, zeros where nothing is stored.
    pub(crate) fn read_into(&self, s: &Segment, at: u64, buf: &mut [u8]) -> io::Result<()> {
        let stored = s.stored.saturating_sub(at).min(buf.len() as u64) as usize;
        let (data, zeros) = buf.split_at_mut(stored);
        zeros.fill(0);
        if !data.is_empty() {
            // Validated: offset + stored <= file length; kept checked for kcore's clipped ones.
            let off = s.offset.checked_add(at).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "segment file offset wraps")
            })?;
            if self.is_hole(off, data.len() as u64) {
                data.fill(0);
            } else {
                self.file.read_exact_at(data, off)?;
            }
        }
        Ok(())
    }

    pub(crate) fn is_hole(&self, off: u64, len: u64) -> bool {
        self.data_extents.as_ref().is_some_and(|ext| {
            let i = ext.partition_point(|&(_, end)| end <= off);
            ext.get(i)
                .is_none_or(|&(start, _)| start >= off.saturating_add(len))
        })
    }

    /// The segment holding physical address `paddr`, if any.
    fn segment_of(&self, paddr: u64) -> Option<&Segment> {
        // Validated segments end below 2^52, kcore's are clipped to RAM; saturating keeps
        // the search monotone even for a segment that slipped through ending at 2^64.
        let idx = self
            .segments
            .partition_point(|s| s.paddr.saturating_add(s.len) <= paddr);
        self.segments.get(idx).filter(|s| s.paddr <= paddr)
    }
}

/// What a failed read of an image means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFailure {
    /// The whole read fails: a file image is expected to hold every byte its segments name.
    Fails,
    /// The page is left unread: live devices refuse some pages of System RAM.
    SkipsPage,
}

/// A physical memory image as a page source: one stream, addresses are physical. Runs of
/// consecutive pages within a segment are read with one pread.
pub struct PhysPages<'a> {
    pub image: &'a PhysImage,
    pub on_error: ReadFailure,
}

impl PageSource for PhysPages<'_> {
    type Stream = ();
    type Error = ImageError;

    fn window_shape(&self) -> WindowShape {
        WINDOW
    }

    fn open_stream(&self, _stream: u32) -> Result<(), ImageError> {
        Ok(())
    }

    fn read_window(
        &self,
        _stream: &(),
        addrs: &[u64],
        _slots: &[u32],
        buf: &mut [u8],
        ok: &mut Vec<bool>,
    ) -> Result<(), ImageError> {
        ok.clear();
        ok.resize(addrs.len(), false);
        let mut i = 0;
        while i < addrs.len() {
            let Some(s) = self.image.segment_of(addrs[i]) else {
                i += 1; // no segment holds it: not read
                continue;
            };
            let mut j = i + 1;
            let seg_end = s.paddr.saturating_add(s.len);
            while j < addrs.len()
                && addrs[j - 1].checked_add(PAGE) == Some(addrs[j])
                && addrs[j] < seg_end
            {
                j += 1;
            }
            let run = &mut buf[i * PAGE_SIZE..j * PAGE_SIZE];
            match self.image.read_into(s, addrs[i] - s.paddr, run) {
                Ok(()) => ok[i..j].fill(true),
                Err(source) if self.on_error == ReadFailure::Fails => {
                    return Err(ImageError::Io {
                        path: self.image.path.clone(),
                        source,
                    })
                }
                // One page at a time, so that one refused page costs only itself.
                Err(_) => {
                    for k in i..j {
                        let page = &mut buf[k * PAGE_SIZE..(k + 1) * PAGE_SIZE];
                        ok[k] = self.image.read_into(s, addrs[k] - s.paddr, page).is_ok();
                    }
                }
            }
            i = j;
        }
        Ok(())
    }
}

/// Data extents of a sparse file (SEEK_DATA/SEEK_HOLE), or None where unsupported.
pub(crate) fn data_extents(file: &File, len: u64) -> Option<Vec<(u64, u64)>> {
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
pub(crate) mod test_files {
    use std::io::Write;
    use std::path::PathBuf;

    use crate::PAGE_SIZE;

    pub fn page(byte: u8) -> Vec<u8> {
        vec![byte; PAGE_SIZE]
    }

    pub fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("dedupx-{}-{name}", std::process::id()));
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(bytes).expect("write");
        path
    }
}
