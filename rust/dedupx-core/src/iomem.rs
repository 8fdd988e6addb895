//! `/proc/iomem`: which physical address ranges are System RAM.

use std::path::Path;

use crate::error::{Result, ScanError};

/// System RAM from the iomem file at `path`. The kernel shows unprivileged readers every
/// address as zero, which is refused here: no range could be told from another.
pub fn read_system_ram(path: &Path) -> Result<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string(path).map_err(|source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let ram = system_ram(&text).map_err(|e| ScanError::Parse {
        path: path.to_path_buf(),
        line: e.line(),
        reason: e.to_string(),
    })?;
    if ram.iter().all(|&(_, end)| end == 0) {
        return Err(ScanError::IomemHidden {
            path: path.to_path_buf(),
        });
    }
    Ok(ram)
}

/// A System RAM line no kernel writes: refused rather than turned into a range that
/// wraps (an inclusive end of `ffffffffffffffff` has no exclusive end in a u64).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IomemError {
    #[error("System RAM range {range} ends at the top of the address space (its end wraps)")]
    Wraps { line: usize, range: String },
    #[error("System RAM range {range} ends before it starts")]
    Reversed { line: usize, range: String },
}

impl IomemError {
    /// The 1-based line of the offending entry.
    pub fn line(&self) -> usize {
        match self {
            IomemError::Wraps { line, .. } | IomemError::Reversed { line, .. } => *line,
        }
    }
}

/// Inclusive-exclusive physical byte ranges of top-level "System RAM" entries. Lines that
/// are not System RAM, or not `start-end : name`, are skipped as before; a System RAM
/// range that is reversed or ends at 2^64 - 1 is an error.
pub fn system_ram(text: &str) -> std::result::Result<Vec<(u64, u64)>, IomemError> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.starts_with(' ') {
            continue; // nested entries (kernel code, ...) lie inside RAM
        }
        let Some((range, name)) = l.split_once(" : ") else {
            continue;
        };
        if name.trim() != "System RAM" {
            continue;
        }
        let Some((a, b)) = range.trim().split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        let bad = |range: &str| (i + 1, range.trim().to_string());
        if end < start {
            let (line, range) = bad(range);
            return Err(IomemError::Reversed { line, range });
        }
        let Some(end) = end.checked_add(1) else {
            let (line, range) = bad(range);
            return Err(IomemError::Wraps { line, range });
        };
        out.push((start, end));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recorded_iomem() {
        let text = include_str!("../testdata/iomem_sample.txt");
        assert_eq!(
            system_ram(text).expect("parses"),
            vec![
                (0x1000, 0x9fc00),
                (0x100000, 0xc000_0000),
                (0x1_0000_0000, 0x6_4000_0000)
            ]
        );
    }

    #[test]
    fn refuses_ram_ending_at_the_top_of_the_address_space() {
        let text =
            "00001000-0009fbff : System RAM\nffffffff00000000-ffffffffffffffff : System RAM\n";
        assert_eq!(
            system_ram(text),
            Err(IomemError::Wraps {
                line: 2,
                range: "ffffffff00000000-ffffffffffffffff".into()
            })
        );
        // Not RAM: a PCI window to the top of the address space is fine and ignored.
        let text = "00001000-0009fbff : System RAM\n100000000-ffffffffffffffff : PCI Bus 0000:00\n";
        assert_eq!(system_ram(text), Ok(vec![(0x1000, 0x9fc00)]));
        let text = "00002000-00000fff : System RAM\n";
        assert!(matches!(
            system_ram(text),
            Err(IomemError::Reversed { line: 1, .. })
        ));
        let path = std::env::temp_dir().join(format!("dedupx-iomem-{}", std::process::id()));
        std::fs::write(&path, "0-ffffffffffffffff : System RAM\n").expect("write");
        let e = read_system_ram(&path).expect_err("wraps");
        assert!(matches!(e, ScanError::Parse { line: 1, .. }), "{e}");
        std::fs::remove_file(path).ok();
    }
}
