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

    /// A hostile image must end in one error at once: no allocation sized by its headers.
    fn refused_quickly(name: &str, bytes: &[u8]) -> ImageError {
        let path = write_temp(name, bytes);
        let start = std::time::Instant::now();
        let e = frames(&path, None).expect_err("a hostile image is refused");
        assert!(
            start.elapsed().as_secs() < 2,
            "{name}: took {:?}",
            start.elapsed()
        );
        std::fs::remove_file(path).ok();
        e
    }

    fn zero_tail_core(memsz: u64) -> Vec<u8> {
        // 64-byte ELF header + one 56-byte program header: the attacker's 120-byte file.
        build_core_header(&[LoadSegment {
            vaddr: 0,
            paddr: 0,
            offset: 0,
            filesz: 0,
            memsz,
        }])
    }

    #[test]
    fn refuses_a_tiny_core_declaring_terabytes_of_zeros() {
        for (name, memsz) in [("tail-1t", 1u64 << 40), ("tail-64t", 64u64 << 40)] {
            let bytes = zero_tail_core(memsz);
            assert_eq!(bytes.len(), 120);
            let e = refused_quickly(name, &bytes);
            assert!(matches!(e, ImageError::Implausible { .. }), "{e}");
            assert!(e.to_string().contains("zero-filled"), "{e}");
        }
        // Within the allowance a zero tail still reads as zeros (4 MiB from 120 bytes).
        let path = write_temp("tail-small", &zero_tail_core(1024 * PAGE));
        assert_eq!(frames(&path, None).expect("hashes").len(), 1024);
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn refuses_segments_that_wrap_or_pass_the_physical_limit() {
        let top = LoadSegment {
            vaddr: 0,
            paddr: 0u64.wrapping_sub(PAGE), // 2^64 - 4096, 8192 bytes: wraps to 4096
            offset: 4096,
            filesz: 2 * PAGE,
            memsz: 2 * PAGE,
        };
        let low = LoadSegment {
            paddr: 0,
            filesz: PAGE,
            memsz: PAGE,
            ..top
        };
        let mut bytes = build_core_header(&[top, low]);
        bytes.resize(4096 + 2 * PAGE as usize, 1);
        let e = refused_quickly("wrap", &bytes);
        assert!(matches!(e, ImageError::Implausible { .. }), "{e}");
        assert!(e.to_string().contains("wraps"), "{e}");

        let past = LoadSegment {
            paddr: crate::segments::PHYS_LIMIT - PAGE,
            ..top
        };
        let mut bytes = build_core_header(&[past]);
        bytes.resize(4096 + 2 * PAGE as usize, 1);
        let e = refused_quickly("past-limit", &bytes);
        assert!(e.to_string().contains("physical address limit"), "{e}");
        // Ending exactly at the limit is fine.
        let last = LoadSegment {
            paddr: crate::segments::PHYS_LIMIT - 2 * PAGE,
            ..top
        };
        let mut bytes = build_core_header(&[last]);
        bytes.resize(4096 + 2 * PAGE as usize, 1);
        let path = write_temp("at-limit", &bytes);
        let img = PhysImage::open(&path, None).expect("opens");
        let mut buf = vec![0u8; PAGE as usize];
        assert!(img
            .read_page((crate::segments::PHYS_LIMIT >> 12) - 1, &mut buf)
            .expect("reads"));
        assert_eq!(buf[0], 1);
        assert!(!img.read_page(u64::MAX, &mut buf).expect("no wrap"));
        assert!(!img.read_page(u64::MAX >> 12, &mut buf).expect("no wrap"));
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn refuses_a_lime_range_over_the_whole_address_space() {
        let mut h = Vec::new();
        h.extend_from_slice(&crate::lime::LIME_MAGIC.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes());
        h.extend_from_slice(&u64::MAX.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes());
        h.extend(std::iter::repeat_n(0u8, PAGE as usize));
        let e = refused_quickly("lime-all", &h);
        assert!(matches!(e, ImageError::BadFormat { .. }), "{e}");
        assert!(e.to_string().contains("whole address space"), "{e}");
    }

    #[test]
    fn refuses_segments_sharing_file_bytes_to_declare_far_more_than_the_file() {
        // 300 segments at distinct addresses, all of the same 4 MiB of the file: 1.2 GiB
        // declared, all "stored", from a 4 MiB file.
        let len = 1024 * PAGE;
        let loads: Vec<LoadSegment> = (0..300)
            .map(|i| LoadSegment {
                vaddr: 0,
                paddr: i * len,
                offset: 5 * PAGE,
                filesz: len,
                memsz: len,
            })
            .collect();
        let mut bytes = build_core_header(&loads);
        bytes.resize((5 * PAGE + len) as usize, 3);
        let e = refused_quickly("shared", &bytes);
        assert!(matches!(e, ImageError::Implausible { .. }), "{e}");
        assert!(e.to_string().contains("share file bytes"), "{e}");
    }
}
