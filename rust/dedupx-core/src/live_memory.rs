//! Live sources of physical memory: /proc/kcore (an ELF core clipped to System RAM) and
//! devices read at physical offsets (/dev/crash, /dev/mem), and the probe that picks the
//! first one that reads.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::phys_image::{ImageError, ImageFormat, PhysImage, PAGE};
use crate::segments::{clip_to_ram, Segment};
use crate::PAGE_SIZE;

impl PhysImage {
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
        // kcore may list RAM twice (direct map and more); clip_to_ram keeps it once.
        img.segments = clip_to_ram(&img.segments, ram);
        img.data_extents = None;
        Ok(img)
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

/// The physical memory source of a host snapshot: the file `phys` when one is named (read
/// as laid out like /proc/kcore), otherwise the first live source that reads. Returns the
/// source, or none with one line per source tried saying why not.
pub fn choose_physical(
    phys: Option<&Path>,
    proc_root: &Path,
    dev_root: &Path,
    ram: &[(u64, u64)],
) -> Result<(Option<PhysImage>, Vec<String>), ImageError> {
    match phys {
        Some(path) => Ok((Some(PhysImage::open_kcore(path, ram)?), Vec::new())),
        None => Ok(open_live(proc_root, dev_root, ram)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf_core::{build_core_header, LoadSegment};
    use crate::page_hash::hash_page;
    use crate::phys_image::test_files::{page, write_temp};

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
}
