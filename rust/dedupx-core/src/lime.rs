//! LiME memory dumps: a sequence of (32-byte header, range bytes) records.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// "LiME" read as a little-endian u32.
pub const LIME_MAGIC: u32 = 0x4C69_4D45;
const HEADER_LEN: u64 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimeRange {
    pub paddr: u64,
    pub len: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimeError {
    #[error("record at byte {0} has no LiME magic")]
    BadMagic(u64),
    #[error("record at byte {0} has LiME version {1} (only 1 is known)")]
    BadVersion(u64, u32),
    #[error("record at byte {0} has its end address before its start")]
    BadRange(u64),
    /// An inclusive end of 2^64 - 1 from 0 is 2^64 bytes: no u64 holds the length.
    #[error("record at byte {at} covers {start:#x}..={end:#x}, the whole address space")]
    WholeAddressSpace { at: u64, start: u64, end: u64 },
    #[error("record at byte {at} needs {need} bytes but the file ends first")]
    Truncated { at: u64, need: u64 },
    #[error("cannot read: {0}")]
    Io(String),
}

pub fn is_lime(magic: &[u8]) -> bool {
    magic.len() >= 4 && u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) == LIME_MAGIC
}

pub fn read_ranges(file: &File, file_len: u64) -> Result<Vec<LimeRange>, LimeError> {
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < file_len {
        if file_len - at < HEADER_LEN {
            return Err(LimeError::Truncated {
                at,
                need: HEADER_LEN,
            });
        }
        let mut h = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut h, at)
            .map_err(|e| LimeError::Io(e.to_string()))?;
        if !is_lime(&h) {
            return Err(LimeError::BadMagic(at));
        }
        let version = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if version != 1 {
            return Err(LimeError::BadVersion(at, version));
        }
        let start = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        let end = u64::from_le_bytes(h[16..24].try_into().unwrap_or_default());
        if end < start {
            return Err(LimeError::BadRange(at));
        }
        // LiME's end address is inclusive; 0..=2^64-1 would wrap to a length of 0.
        let Some(len) = (end - start).checked_add(1) else {
            return Err(LimeError::WholeAddressSpace { at, start, end });
        };
        let data = at + HEADER_LEN; // at <= file_len - HEADER_LEN: no wrap
        if file_len - data < len {
            return Err(LimeError::Truncated {
                at,
                // len may be up to 2^64 - 1 (found by fuzzing: 3..=2^64-1 overflowed here)
                need: len.saturating_add(HEADER_LEN),
            });
        }
        out.push(LimeRange {
            paddr: start,
            len,
            offset: data,
        });
        at = data + len; // data + len <= file_len, checked above
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys_image::test_files::write_temp;

    fn ranges_of(name: &str, bytes: &[u8]) -> Result<Vec<LimeRange>, LimeError> {
        let path = write_temp(name, bytes);
        let file = File::open(&path).expect("open");
        std::fs::remove_file(&path).ok();
        read_ranges(&file, bytes.len() as u64)
    }

    fn header(start: u64, end: u64) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&LIME_MAGIC.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&start.to_le_bytes());
        h.extend_from_slice(&end.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes());
        h
    }

    #[test]
    fn refuses_ranges_that_wrap() {
        assert_eq!(
            ranges_of("lime-whole", &header(0, u64::MAX)),
            Err(LimeError::WholeAddressSpace {
                at: 0,
                start: 0,
                end: u64::MAX
            })
        );
        // Fuzzer crash: 3..=2^64-1 is 2^64-3 bytes; the error's "need" overflowed.
        assert_eq!(
            ranges_of("lime-huge", &header(3, u64::MAX)),
            Err(LimeError::Truncated {
                at: 0,
                need: u64::MAX
            })
        );
        let mut two = header(0, 4095);
        two.extend(std::iter::repeat_n(9u8, 4096));
        assert_eq!(
            ranges_of("lime-ok", &two),
            Ok(vec![LimeRange {
                paddr: 0,
                len: 4096,
                offset: 32
            }])
        );
    }
}
