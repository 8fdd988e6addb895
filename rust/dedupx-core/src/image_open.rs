//! Opening a memory image file: its format told by magic (raw, ELF core, LiME) unless
//! named, and its segments read from the headers and checked.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::elf_core::{self, ElfError};
use crate::lime::{self, LimeError};
use crate::phys_image::{data_extents, ImageError, ImageFormat, PhysImage, PAGE};
use crate::segments::{validate, Segment};

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
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::elf_core::{build_core_header, LoadSegment};
    use crate::image_frames::FrameTable;
    use crate::phys_image::test_files::write_temp;

    fn frames(path: &Path, format: Option<ImageFormat>) -> Result<FrameTable, ImageError> {
        PhysImage::open(path, format)?.hash_frames(&|_, _| true)
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
