//! Program headers of ELF64 little-endian core files: QEMU's `dump-guest-memory`,
//! vmcores, `/proc/kcore` and copies of it. Only PT_LOAD segments matter to us.

use std::fs::File;
use std::os::unix::fs::FileExt;

const PT_LOAD: u32 = 1;
const ET_CORE: u16 = 4;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub paddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// Why a file is not a usable ELF core; the caller adds the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("unsupported ELF: {0}")]
    Unsupported(&'static str),
    #[error("ELF header truncated or program headers out of the file")]
    Truncated,
    #[error("cannot read: {0}")]
    Io(String),
}

pub fn is_elf(magic: &[u8]) -> bool {
    magic.starts_with(b"\x7fELF")
}

pub fn read_load_segments(file: &File, file_len: u64) -> Result<Vec<LoadSegment>, ElfError> {
    let mut ehdr = [0u8; EHDR_LEN];
    read_exact_at(file, &mut ehdr, 0)?;
    if !is_elf(&ehdr) {
        return Err(ElfError::NotElf);
    }
    if ehdr[4] != 2 {
        return Err(ElfError::Unsupported("not 64-bit (ELFCLASS64)"));
    }
    if ehdr[5] != 1 {
        return Err(ElfError::Unsupported("not little-endian"));
    }
    if u16_at(&ehdr, 16) != ET_CORE {
        return Err(ElfError::Unsupported("not a core file (e_type != ET_CORE)"));
    }
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54) as usize;
    let mut phnum = u16_at(&ehdr, 56) as u64;
    if phentsize != PHDR_LEN {
        return Err(ElfError::Unsupported("unexpected program header size"));
    }
    if phnum == 0xffff {
        // PN_XNUM: the real count is in section header 0's sh_info.
        let shoff = u64_at(&ehdr, 40);
        let mut sh0 = [0u8; 64];
        read_exact_at(file, &mut sh0, shoff)?;
        phnum = u32_at(&sh0, 44) as u64;
    }
    let table_len = phnum
        .checked_mul(PHDR_LEN as u64)
        .ok_or(ElfError::Truncated)?;
    if phoff
        .checked_add(table_len)
        .is_none_or(|end| end > file_len)
    {
        return Err(ElfError::Truncated);
    }
    let mut table = vec![0u8; table_len as usize];
    read_exact_at(file, &mut table, phoff)?;
    Ok(table
        .chunks_exact(PHDR_LEN)
        .filter(|ph| u32_at(ph, 0) == PT_LOAD)
        .map(|ph| LoadSegment {
            offset: u64_at(ph, 8),
            vaddr: u64_at(ph, 16),
            paddr: u64_at(ph, 24),
            filesz: u64_at(ph, 32),
            memsz: u64_at(ph, 40),
        })
        .collect())
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), ElfError> {
    let mut filled = 0;
    while filled < buf.len() {
        // An offset from the header (e_phoff, e_shoff) near 2^64 must not wrap to the start.
        let at = offset
            .checked_add(filled as u64)
            .ok_or(ElfError::Truncated)?;
        match file.read_at(&mut buf[filled..], at) {
            Ok(0) => return Err(ElfError::Truncated),
            Ok(n) => filled += n,
            Err(e) => return Err(ElfError::Io(e.to_string())),
        }
    }
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Builds a minimal ELF64 core with the given PT_LOAD headers (test and fixture helper).
pub fn build_core_header(loads: &[LoadSegment]) -> Vec<u8> {
    let mut out = vec![0u8; EHDR_LEN];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little-endian
    out[6] = 1; // EV_CURRENT
    out[16..18].copy_from_slice(&ET_CORE.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[32..40].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes());
    out[52..54].copy_from_slice(&(EHDR_LEN as u16).to_le_bytes());
    out[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
    out[56..58].copy_from_slice(&(loads.len() as u16).to_le_bytes());
    for l in loads {
        let mut ph = [0u8; PHDR_LEN];
        ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[4..8].copy_from_slice(&4u32.to_le_bytes()); // PF_R
        ph[8..16].copy_from_slice(&l.offset.to_le_bytes());
        ph[16..24].copy_from_slice(&l.vaddr.to_le_bytes());
        ph[24..32].copy_from_slice(&l.paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&l.filesz.to_le_bytes());
        ph[40..48].copy_from_slice(&l.memsz.to_le_bytes());
        ph[48..56].copy_from_slice(&4096u64.to_le_bytes());
        out.extend_from_slice(&ph);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_with(bytes: &[u8]) -> (File, u64) {
        let mut f = tempfile_in_tmp();
        f.write_all(bytes).expect("write");
        (f, bytes.len() as u64)
    }

    fn tempfile_in_tmp() -> File {
        let path = std::env::temp_dir().join(format!(
            "dedupx-elf-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        std::fs::remove_file(&path).expect("unlink");
        f
    }

    #[test]
    fn round_trips_load_headers() {
        let loads = [
            LoadSegment {
                vaddr: 0,
                paddr: 0,
                offset: 4096,
                filesz: 8192,
                memsz: 8192,
            },
            LoadSegment {
                vaddr: 7,
                paddr: 0x10_0000,
                offset: 12288,
                filesz: 4096,
                memsz: 8192,
            },
        ];
        let (f, len) = temp_with(&build_core_header(&loads));
        assert_eq!(read_load_segments(&f, len).expect("parses"), loads);
    }

    #[test]
    fn rejects_bad_headers() {
        let (f, len) = temp_with(b"\x7fELF\x01\x01");
        assert_eq!(read_load_segments(&f, len), Err(ElfError::Truncated));
        let mut h = build_core_header(&[]);
        h[4] = 1;
        let (f, len) = temp_with(&h);
        assert!(matches!(
            read_load_segments(&f, len),
            Err(ElfError::Unsupported(_))
        ));
        let mut h = build_core_header(&[LoadSegment {
            vaddr: 0,
            paddr: 0,
            offset: 0,
            filesz: 0,
            memsz: 0,
        }]);
        h.truncate(80);
        let (f, len) = temp_with(&h);
        assert_eq!(read_load_segments(&f, len), Err(ElfError::Truncated));
        let (f, len) = temp_with(&[0u8; 64]);
        assert_eq!(read_load_segments(&f, len), Err(ElfError::NotElf));
    }
}
