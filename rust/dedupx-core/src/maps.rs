//! `/proc/PID/smaps`: the VMAs of a process with their flags and the kernel's own Rss/Pss.

use std::path::Path;

use crate::error::{Result, ScanError};

/// What a VMA holds, as far as its header tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmaKind {
    Heap,
    Stack,
    Anon,
    File,
    Shmem,
    GuestRam,
    Special,
}

impl VmaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VmaKind::Heap => "heap",
            VmaKind::Stack => "stack",
            VmaKind::Anon => "anon",
            VmaKind::File => "file",
            VmaKind::Shmem => "shmem",
            VmaKind::GuestRam => "guest_ram",
            VmaKind::Special => "special",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    pub path: String,
    pub kind: VmaKind,
    /// VmFlags as the kernel prints them (two-letter codes).
    pub vm_flags: Vec<String>,
    pub rss_kb: u64,
    pub pss_kb: u64,
    pub swap_kb: u64,
    pub anon_huge_kb: u64,
    /// The page size the kernel maps this VMA with (`KernelPageSize`): 4 KiB, or a
    /// hugetlbfs page size (2 MiB, 1 GiB); 0 where smaps does not say.
    pub kernel_page_kb: u64,
    /// hugetlb pages mapped here, which smaps leaves out of Rss and Pss: by whether the
    /// huge page may be mapped by another process too (`Shared_Hugetlb`) or not.
    pub shared_hugetlb_kb: u64,
    pub private_hugetlb_kb: u64,
}

impl Vma {
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / crate::PAGE_SIZE as u64
    }

    pub fn has_flag(&self, code: &str) -> bool {
        self.vm_flags.iter().any(|f| f == code)
    }

    /// Whether the pagemap covers it: the legacy `[vsyscall]` page lies above the user
    /// address space the pagemap describes.
    pub fn in_pagemap(&self) -> bool {
        self.path != "[vsyscall]"
    }

    /// `MADV_MERGEABLE` set: KSM may merge its private anonymous pages.
    pub fn mergeable(&self) -> bool {
        self.has_flag("mg")
    }

    /// Whether its pages can be copied: `process_vm_readv` honours protections, and the
    /// `/proc/PID/mem` fallback (FOLL_FORCE) reads what the owner may make readable ("mr");
    /// I/O and PFN mappings ([vvar] and device memory) are not ordinary pages.
    pub fn readable(&self) -> bool {
        let special = self.kind == VmaKind::Special && self.path != "[vdso]";
        (self.perms.starts_with('r') || self.has_flag("mr"))
            && !special
            && !self.has_flag("io")
            && !self.has_flag("pf")
    }
}

/// Parses the text of `/proc/PID/smaps`; `path` only names the source in errors.
pub fn parse_smaps(text: &str, path: &Path) -> Result<Vec<Vma>> {
    let mut vmas: Vec<Vma> = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let err = |reason: &str| ScanError::Parse {
            path: path.to_path_buf(),
            line: lineno + 1,
            reason: reason.to_string(),
        };
        let Some(first) = line.split_ascii_whitespace().next() else {
            continue;
        };
        if let Some(key) = first.strip_suffix(':') {
            let vma = vmas
                .last_mut()
                .ok_or_else(|| err("field before any mapping"))?;
            // `first` starts after any leading ASCII whitespace, not at byte 0 (found by
            // fuzzing: an indented key followed by a multi-byte char sliced mid-char).
            let rest =
                line.trim_start_matches(|c: char| c.is_ascii_whitespace())[first.len()..].trim();
            match key {
                "VmFlags" => {
                    vma.vm_flags = rest.split_ascii_whitespace().map(str::to_string).collect();
                }
                "Rss" => vma.rss_kb = parse_kb(rest).ok_or_else(|| err("bad Rss"))?,
                "Pss" => vma.pss_kb = parse_kb(rest).ok_or_else(|| err("bad Pss"))?,
                "Swap" => vma.swap_kb = parse_kb(rest).ok_or_else(|| err("bad Swap"))?,
                "AnonHugePages" => {
                    vma.anon_huge_kb = parse_kb(rest).ok_or_else(|| err("bad AnonHugePages"))?
                }
                "KernelPageSize" => {
                    vma.kernel_page_kb = parse_kb(rest).ok_or_else(|| err("bad KernelPageSize"))?
                }
                "Shared_Hugetlb" => {
                    vma.shared_hugetlb_kb =
                        parse_kb(rest).ok_or_else(|| err("bad Shared_Hugetlb"))?
                }
                "Private_Hugetlb" => {
                    vma.private_hugetlb_kb =
                        parse_kb(rest).ok_or_else(|| err("bad Private_Hugetlb"))?
                }
                _ => {}
            }
        } else {
            vmas.push(parse_header(line).ok_or_else(|| err("bad mapping line"))?);
        }
    }
    Ok(vmas)
}

fn parse_kb(value: &str) -> Option<u64> {
    value.strip_suffix("kB")?.trim().parse().ok()
}

/// `start-end perms offset dev inode [path]`; the path may contain spaces.
fn parse_header(line: &str) -> Option<Vma> {
    let mut rest = line;
    let mut fields = [""; 5];
    for field in fields.iter_mut() {
        rest = rest.trim_start();
        let end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        *field = &rest[..end];
        rest = &rest[end..];
    }
    let [range, perms, offset, dev, inode] = fields;
    let (start, end) = range.split_once('-')?;
    let path = rest.trim().to_string();
    let kind = classify(&path, inode);
    Some(Vma {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: perms.to_string(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_string(),
        inode: inode.parse().ok()?,
        path,
        kind,
        vm_flags: Vec::new(),
        rss_kb: 0,
        pss_kb: 0,
        swap_kb: 0,
        anon_huge_kb: 0,
        kernel_page_kb: 0,
        shared_hugetlb_kb: 0,
        private_hugetlb_kb: 0,
    })
}

fn classify(path: &str, inode: &str) -> VmaKind {
    match path {
        "" => VmaKind::Anon,
        "[heap]" => VmaKind::Heap,
        "[stack]" => VmaKind::Stack,
        "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" | "[uprobes]" => VmaKind::Special,
        _ if path.starts_with("[stack:") => VmaKind::Stack,
        _ if path.starts_with("[anon_shmem:") => VmaKind::Shmem,
        _ if path.starts_with("[anon:") => VmaKind::Anon,
        // Shared anonymous memory, SysV segments, memfd and tmpfs files live in shmem.
        _ if path.starts_with("/dev/zero")
            || path.starts_with("/SYSV")
            || path.starts_with("/memfd:")
            || path.starts_with("/dev/shm/") =>
        {
            VmaKind::Shmem
        }
        _ if inode == "0" && path.starts_with('[') => VmaKind::Special,
        _ => VmaKind::File,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../testdata/smaps_sample.txt");

    #[test]
    fn an_indented_field_with_a_multibyte_key_is_not_sliced_mid_char() {
        // Fuzzer crash (smaps): the value was sliced at first.len() from the line's start.
        let text = "55812a400000-55812a408000 r--p 00000000 fe:01 0\n        \u{fffd}Flags: ex\n  Rss:   8 kB\n";
        let vmas = parse_smaps(text, Path::new("smaps")).expect("parses");
        assert_eq!(vmas.len(), 1);
        assert_eq!(vmas[0].rss_kb, 8);
    }

    #[test]
    fn parses_recorded_smaps() {
        let vmas = parse_smaps(SAMPLE, Path::new("smaps")).expect("sample parses");
        assert_eq!(vmas.len(), 7);
        let bin = &vmas[0];
        assert_eq!(bin.start, 0x5581_2a40_0000);
        assert_eq!(bin.end, 0x5581_2a42_8000);
        assert_eq!(bin.perms, "r--p");
        assert_eq!(bin.dev, "fe:01");
        assert_eq!(bin.inode, 1_312_377);
        assert_eq!(bin.path, "/usr/bin/my program");
        assert_eq!(bin.kind, VmaKind::File);
        assert_eq!((bin.rss_kb, bin.pss_kb), (160, 80));
        assert_eq!(bin.kernel_page_kb, 4);
        assert!(!bin.mergeable());
        assert_eq!(bin.pages(), 40);

        let heap = &vmas[1];
        assert_eq!(heap.kind, VmaKind::Heap);
        assert!(heap.mergeable());
        assert_eq!(heap.swap_kb, 12);

        let guest = &vmas[2];
        assert_eq!(guest.kind, VmaKind::Anon);
        assert_eq!(guest.anon_huge_kb, 6144);
        assert!(guest.has_flag("hg"));

        assert_eq!(vmas[3].kind, VmaKind::Shmem);

        // hugetlbfs: smaps counts its pages apart from Rss, by huge page size.
        let huge = &vmas[4];
        assert!(huge.has_flag("ht"));
        assert_eq!(huge.kernel_page_kb, 2048);
        assert_eq!(
            (huge.rss_kb, huge.shared_hugetlb_kb, huge.private_hugetlb_kb),
            (0, 4096, 122880)
        );

        assert_eq!(vmas[5].kind, VmaKind::Stack);
        assert_eq!(vmas[6].kind, VmaKind::Special);
        assert!(!vmas[6].readable(), "vsyscall is not memory we copy");
        assert!(vmas[5].readable());
    }

    #[test]
    fn rejects_garbage_with_line_number() {
        let err = parse_smaps("Rss: 4 kB\n", Path::new("x")).expect_err("field first");
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = parse_smaps("zz-1 r--p 0 00:00 0\n", Path::new("x")).expect_err("bad hex");
        assert!(err.to_string().contains("bad mapping line"), "{err}");
    }
}
