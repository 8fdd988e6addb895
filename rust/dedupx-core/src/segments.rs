//! The page-aligned segments of physical memory an image holds, and the checks that keep
//! frames unambiguous and readable.
//!
//! Images are untrusted input read by root, so every sum of header values is checked and
//! what they declare must be plausible before anything is sized by it:
//!
//! * No segment may end past [`PHYS_LIMIT`] (2^52 bytes, the x86-64 architectural limit
//!   of physical addresses): then `paddr + len` cannot wrap, and every later sum of an
//!   address and a length within a segment stays far below 2^64.
//! * The zero-filled tails (ELF `p_memsz` beyond `p_filesz`) of all segments together may
//!   declare at most [`MAX_ZERO_TAIL_RATIO`] times the file's size, or
//!   [`MIN_ZERO_TAIL_ALLOWANCE`] whatever the file's size. Hashing costs about 25 bytes per
//!   declared page (16 of hash, 8 of PFN, a flag and a bit), 0.6 % of the memory declared;
//!   bytes stored in the file are bounded by the file, but a tail is free to declare. With
//!   the cap the frame table of any image costs at most about 0.4 x the file size plus
//!   7 MiB: a 120-byte core declaring 1 TiB or 64 TiB of zeros is refused at once instead
//!   of allocating gigabytes (or aborting on a failed allocation). QEMU writes every byte
//!   (`p_filesz == p_memsz`); makedumpfile's ELF output drops excluded zero pages from
//!   segment ends, which a 64x ratio leaves room for (a dump 1/64 of the RAM it covers).
//! * The same bound holds for all the memory declared: ELF segments may point at the same
//!   file bytes, so a 4 MiB core with 65535 program headers could otherwise declare
//!   256 GiB, all of it "stored". No producer reuses file bytes; this costs them nothing.

use std::path::Path;

use crate::phys_image::{ImageError, PAGE};

/// One past the highest physical address an x86-64 machine can have (52 address bits).
pub const PHYS_LIMIT: u64 = 1 << 52;
/// Zero-filled tails may declare at most this many times the file's size in total ...
pub const MAX_ZERO_TAIL_RATIO: u64 = 64;
/// ... or this many bytes, whichever is larger (a tiny core with a few zero pages is fine).
pub const MIN_ZERO_TAIL_ALLOWANCE: u64 = 1 << 30;

/// `len` bytes of physical memory from `paddr`, stored at `offset` in the file; past
/// `stored` bytes (ELF `p_filesz` < `p_memsz`) the segment reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub len: u64,
    pub offset: u64,
    pub stored: u64,
}

impl Segment {
    /// One past the segment's last byte, or None if that would wrap around 2^64.
    pub fn end(&self) -> Option<u64> {
        self.paddr.checked_add(self.len)
    }
}

/// Sorts segments and refuses what would make frames ambiguous, unreadable or implausible.
pub(crate) fn validate(
    path: &Path,
    mut segs: Vec<Segment>,
    file_len: u64,
) -> Result<Vec<Segment>, ImageError> {
    let implausible = |detail: String| ImageError::Implausible {
        path: path.to_path_buf(),
        detail,
    };
    let mut zero_tail = 0u64;
    let mut declared = 0u64;
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
        match s.end() {
            None => {
                return Err(implausible(format!(
                    "range at physical {:#x} of {} bytes wraps around the address space",
                    s.paddr, s.len
                )))
            }
            Some(end) if end > PHYS_LIMIT => {
                return Err(implausible(format!(
                    "range at physical {:#x} of {} bytes ends at {end:#x}, past the x86-64 \
                     physical address limit {PHYS_LIMIT:#x}",
                    s.paddr, s.len
                )))
            }
            Some(_) => {}
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
        // Both below 2^52 (len checked above): the sum cannot wrap.
        zero_tail = zero_tail.saturating_add(s.len.saturating_sub(s.stored));
        // Up to 2^32 program headers (PN_XNUM) of up to 2^52 bytes each: the sums may
        // pass 2^64, and saturating is enough, any saturated sum is past the allowance.
        declared = declared.saturating_add(s.len);
    }
    let allowance = file_len
        .saturating_mul(MAX_ZERO_TAIL_RATIO)
        .max(MIN_ZERO_TAIL_ALLOWANCE);
    if zero_tail > allowance {
        return Err(implausible(format!(
            "its ranges declare {zero_tail} bytes of zero-filled memory beyond what the file \
             stores, more than {MAX_ZERO_TAIL_RATIO} x its {file_len} bytes (at least \
             {MIN_ZERO_TAIL_ALLOWANCE} allowed)"
        )));
    }
    if declared > allowance {
        return Err(implausible(format!(
            "its ranges declare {declared} bytes of memory in all, more than \
             {MAX_ZERO_TAIL_RATIO} x its {file_len} bytes (at least {MIN_ZERO_TAIL_ALLOWANCE} \
             allowed): ranges share file bytes"
        )));
    }
    segs.sort_by_key(|s| s.paddr);
    for w in segs.windows(2) {
        // end() is Some and below 2^52 for every segment here.
        if w[0].end().is_none_or(|end| w[1].paddr < end) {
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
            // lo rounded up to a page wraps only within the last page of 2^64: nothing.
            let Some(lo) = lo.div_ceil(PAGE).checked_mul(PAGE) else {
                continue;
            };
            let hi = hi / PAGE * PAGE;
            if hi > lo {
                let skip = lo - s.paddr;
                let Some(offset) = s.offset.checked_add(skip) else {
                    continue; // kcore never says so; a file offset past 2^64 reads nothing
                };
                out.push(Segment {
                    paddr: lo,
                    len: hi - lo,
                    offset,
                    stored: s.stored.saturating_sub(skip).min(hi - lo),
                });
            }
        }
    }
    out.sort_by_key(|s| s.paddr);
    out.dedup_by(|b, a| b.paddr < a.paddr.saturating_add(a.len));
    out
}
