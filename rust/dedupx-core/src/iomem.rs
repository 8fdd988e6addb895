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
    let ram = system_ram(&text);
    if ram.iter().all(|&(_, end)| end == 0) {
        return Err(ScanError::IomemHidden {
            path: path.to_path_buf(),
        });
    }
    Ok(ram)
}

/// Inclusive-exclusive physical byte ranges of top-level "System RAM" entries.
pub fn system_ram(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter(|l| !l.starts_with(' ')) // nested entries (kernel code, ...) lie inside RAM
        .filter_map(|l| {
            let (range, name) = l.split_once(" : ")?;
            if name.trim() != "System RAM" {
                return None;
            }
            let (a, b) = range.trim().split_once('-')?;
            let start = u64::from_str_radix(a, 16).ok()?;
            let end = u64::from_str_radix(b, 16).ok()?;
            Some((start, end + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recorded_iomem() {
        let text = include_str!("../testdata/iomem_sample.txt");
        assert_eq!(
            system_ram(text),
            vec![
                (0x1000, 0x9fc00),
                (0x100000, 0xc000_0000),
                (0x1_0000_0000, 0x6_4000_0000)
            ]
        );
    }
}
