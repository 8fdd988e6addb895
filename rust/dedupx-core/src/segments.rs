//! The page-aligned segments of physical memory an image holds, and the checks that keep
//! frames unambiguous and readable.

use std::path::Path;

use crate::phys_image::{ImageError, PAGE};

/// `len` bytes of physical memory from `paddr`, stored at `offset` in the file; past
/// `stored` bytes (ELF `p_filesz` < `p_memsz`) the segment reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub len: u64,
    pub offset: u64,
    pub stored: u64,
}

/// Sorts segments and refuses what would make frames ambiguous or unreadable.
pub(crate) fn validate(
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

/// Keeps the parts of `segs` inside the RAM ranges `ram` (byte ranges), page-aligned and
/// sorted; a range listed twice is kept once.
pub(crate) fn clip_to_ram(segs: &[Segment], ram: &[(u64, u64)]) -> Vec<Segment> {
    let mut out = Vec::new();
    for s in segs {
        for &(a, b) in ram {
            let (lo, hi) = (s.paddr.max(a), s.paddr.saturating_add(s.len).min(b));
            if hi <= lo {
                continue;
            }
            let (lo, hi) = (lo.div_ceil(PAGE) * PAGE, hi / PAGE * PAGE);
            if hi > lo {
                let skip = lo - s.paddr;
                out.push(Segment {
                    paddr: lo,
                    len: hi - lo,
                    offset: s.offset + skip,
                    stored: s.stored.saturating_sub(skip).min(hi - lo),
                });
            }
        }
    }
    out.sort_by_key(|s| s.paddr);
    out.dedup_by(|b, a| b.paddr < a.paddr + a.len);
    out
}
