//! The file `dedupx-agent` writes inside a guest and the host reads with `--guest FILE`:
//! what the guest kernel says of each of its physical pages, and their hashes.
//!
//! Layout (little-endian): a fixed header of offsets, a JSON metadata blob (kernel, RAM
//! ranges, meminfo, MGLRU state, per-process anon/file sizes) for the Python side, then
//! per-PFN arrays, then a trailer. Offsets, lengths and the trailer are all checked, so a
//! truncated or damaged file is refused rather than misread.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::bitmap::BitVec;

pub const MAGIC: &[u8; 8] = b"DDXAGNT1";
pub const TRAILER: &[u8; 8] = b"DDXEND!!";
pub const VERSION: u32 = 1;
const HEADER_LEN: u64 = 8 + 4 + 4 + 8 * 8;

/// What the agent collected.
#[derive(Debug, Default)]
pub struct AgentData {
    pub meta_json: String,
    pub kpageflags: Vec<u64>,
    pub kpagecount: Vec<u64>,
    /// 16 bytes per PFN where `hashed`, else zeros; empty when nothing was hashed.
    pub hashes: Vec<u8>,
    pub hashed: BitVec,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentFileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a dedupx-agent file ({detail})")]
    Corrupt { path: PathBuf, detail: String },
}

pub fn write(out: &mut impl Write, d: &AgentData) -> io::Result<()> {
    let n = d.kpageflags.len() as u64;
    let meta_off = HEADER_LEN;
    let meta_len = d.meta_json.len() as u64;
    let flags_off = meta_off + meta_len;
    let counts_off = flags_off + 8 * n;
    let (hashes_off, hashed_off, end) = if d.hashes.is_empty() {
        (0, 0, counts_off + 8 * n)
    } else {
        let h = counts_off + 8 * n;
        (h, h + 16 * n, h + 16 * n + n.div_ceil(8))
    };
    let total = end + TRAILER.len() as u64;
    let mut head = Vec::with_capacity(HEADER_LEN as usize);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&4096u32.to_le_bytes());
    for v in [
        n, meta_off, meta_len, flags_off, counts_off, hashes_off, hashed_off, total,
    ] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    out.write_all(&head)?;
    out.write_all(d.meta_json.as_bytes())?;
    for arr in [&d.kpageflags, &d.kpagecount] {
        let bytes: Vec<u8> = arr.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write_all(&bytes)?;
    }
    if !d.hashes.is_empty() {
        out.write_all(&d.hashes)?;
        let (words, len) = d.hashed.clone().into_words();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.write_all(&bytes[..len.div_ceil(8)])?;
    }
    out.write_all(TRAILER)?;
    out.flush()
}

pub fn read(path: &Path) -> Result<AgentData, AgentFileError> {
    let io_err = |source| AgentFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |detail: &str| AgentFileError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size < HEADER_LEN + TRAILER.len() as u64 {
        return Err(bad("too short for a header: truncated"));
    }
    let mut head = vec![0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut head, 0).map_err(io_err)?;
    if &head[..8] != MAGIC {
        return Err(bad("wrong magic"));
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let u64_at = |i: usize| {
        let at = 16 + 8 * i;
        let mut w = [0u8; 8];
        w.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if u32_at(8) != VERSION {
        return Err(bad(&format!(
            "version {} (this dedupx reads {VERSION})",
            u32_at(8)
        )));
    }
    let [n, meta_off, meta_len, flags_off, counts_off, hashes_off, hashed_off, total] =
        std::array::from_fn(u64_at);
    if total != size {
        return Err(bad(&format!(
            "says {total} bytes but has {size}: truncated or padded"
        )));
    }
    let mut trailer = [0u8; 8];
    file.read_exact_at(&mut trailer, size - 8).map_err(io_err)?;
    if &trailer != TRAILER {
        return Err(bad("no trailer: truncated"));
    }
    let fits = |off: u64, len: u64| off.checked_add(len).is_some_and(|e| e <= size - 8);
    let arrays_ok = n.checked_mul(16).is_some()
        && fits(meta_off, meta_len)
        && fits(flags_off, 8 * n)
        && fits(counts_off, 8 * n)
        && (hashes_off == 0 || (fits(hashes_off, 16 * n) && fits(hashed_off, n.div_ceil(8))));
    if !arrays_ok {
        return Err(bad("section offsets point outside the file"));
    }
    let read_vec = |off: u64, len: u64| -> Result<Vec<u8>, AgentFileError> {
        let mut v = vec![0u8; len as usize];
        file.read_exact_at(&mut v, off).map_err(io_err)?;
        Ok(v)
    };
    let words = |b: Vec<u8>| -> Vec<u64> {
        b.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect()
    };
    let meta = read_vec(meta_off, meta_len)?;
    let meta_json = String::from_utf8(meta).map_err(|_| bad("metadata is not UTF-8"))?;
    let mut d = AgentData {
        meta_json,
        kpageflags: words(read_vec(flags_off, 8 * n)?),
        kpagecount: words(read_vec(counts_off, 8 * n)?),
        ..AgentData::default()
    };
    if hashes_off != 0 {
        d.hashes = read_vec(hashes_off, 16 * n)?;
        let bits = read_vec(hashed_off, n.div_ceil(8))?;
        d.hashed = (0..n as usize)
            .map(|i| bits[i / 8] >> (i % 8) & 1 == 1)
            .collect();
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentData {
        AgentData {
            meta_json: "{\"kernel\":\"6.1\"}".into(),
            kpageflags: vec![1, 2, 3],
            kpagecount: vec![0, 1, 5],
            hashes: (0..48).map(|i| i as u8).collect(),
            hashed: [true, false, true].into_iter().collect(),
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let path = std::env::temp_dir().join(format!("dedupx-agent-{}", std::process::id()));
        let mut bytes = Vec::new();
        write(&mut bytes, &sample()).expect("write");
        std::fs::write(&path, &bytes).expect("save");
        let d = read(&path).expect("read back");
        assert_eq!(d.meta_json, "{\"kernel\":\"6.1\"}");
        assert_eq!((d.kpageflags, d.kpagecount), (vec![1, 2, 3], vec![0, 1, 5]));
        assert_eq!(d.hashes.len(), 48);
        assert!(d.hashed.get(0) && !d.hashed.get(1) && d.hashed.get(2));

        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("truncate");
        let e = read(&path).expect_err("truncated");
        assert!(e.to_string().contains("truncated"), "{e}");
        let mut bad = bytes.clone();
        bad[0] = b'X';
        std::fs::write(&path, &bad).expect("damage");
        assert!(read(&path)
            .expect_err("magic")
            .to_string()
            .contains("magic"));
        std::fs::remove_file(path).ok();
    }
}
