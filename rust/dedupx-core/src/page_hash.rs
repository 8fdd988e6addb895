//! BLAKE3 of 4 KiB pages, many at once, and the zero test that spares hashing zero pages.
//!
//! `blake3::hash` on one page fills only 4 of the 16 AVX-512 lanes; hashing 16 or more pages
//! together through the (doc-hidden, hence pinned) `Platform::hash_many` fills them all and
//! is about twice as fast, with identical digests (checked by the tests below).

use blake3::platform::Platform;
use blake3::IncrementCounter;

use crate::PAGE_SIZE;

/// The first 16 bytes of a BLAKE3 digest: the `hash` column.
pub type PageHash = [u8; 16];

const CHUNK_LEN: usize = 1024;
const CHUNKS: usize = PAGE_SIZE / CHUNK_LEN;
const CV_LEN: usize = 32;
// Domain flags and IV from the BLAKE3 specification (private in the crate).
const CHUNK_START: u8 = 1;
const CHUNK_END: u8 = 2;
const PARENT: u8 = 4;
const ROOT: u8 = 8;
const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];

pub fn is_zero(page: &[u8]) -> bool {
    // Word compares auto-vectorise; `iter().all` on bytes does not.
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only hands out aligned words.
        unsafe { page.align_to::<u64>() }
    };
    // Blocks of 256 bytes, each OR-ed in vector registers: a page holding data fails in its
    // first block almost always, so the test costs it next to nothing. Reading the whole
    // page (one fold over all of it) cost as much as the hashing it spared: on a target
    // with 1/8 zero pages, copy + test + hash ran slower than copy + hash of every page.
    head.iter().all(|&b| b == 0)
        && tail.iter().all(|&b| b == 0)
        && words
            .chunks(32)
            .all(|block| block.iter().fold(0u64, |acc, &w| acc | w) == 0)
}

/// The hash of an all-zero page, computed once.
pub fn zero_page_hash() -> PageHash {
    static ZERO: std::sync::OnceLock<PageHash> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| hash_page(&[0u8; PAGE_SIZE]))
}

pub fn hash_page(page: &[u8]) -> PageHash {
    truncate(blake3::hash(page).as_bytes())
}

fn truncate(digest: &[u8]) -> PageHash {
    let mut h = [0u8; 16];
    h.copy_from_slice(&digest[..16]);
    h
}

/// Hashes whole pages in batches; scratch buffers are reused between calls.
pub struct PageHasher {
    platform: Platform,
    chunk_cvs: Vec<u8>,
    parents: Vec<u8>,
    out: Vec<u8>,
}

impl Default for PageHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl PageHasher {
    pub fn new() -> Self {
        Self {
            platform: Platform::detect(),
            chunk_cvs: Vec::new(),
            parents: Vec::new(),
            out: Vec::new(),
        }
    }

    /// `pages[i]` is hashed into `out[i]`; each slice must be exactly one page.
    pub fn hash_pages(&mut self, pages: &[&[u8]], out: &mut [PageHash]) {
        assert_eq!(pages.len(), out.len());
        assert!(pages.iter().all(|p| p.len() == PAGE_SIZE));
        let n = pages.len();
        if n < 4 {
            for (p, o) in pages.iter().zip(out.iter_mut()) {
                *o = hash_page(p);
            }
            return;
        }
        // Leaves: chunk c of every page, with chunk counter c (so no counter increment).
        self.chunk_cvs.resize(CHUNKS * n * CV_LEN, 0);
        let mut inputs: Vec<&[u8; CHUNK_LEN]> = Vec::with_capacity(n);
        for c in 0..CHUNKS {
            inputs.clear();
            inputs.extend(pages.iter().map(|p| chunk(p, c)));
            self.platform.hash_many(
                &inputs,
                &IV,
                c as u64,
                IncrementCounter::No,
                0,
                CHUNK_START,
                CHUNK_END,
                &mut self.chunk_cvs[c * n * CV_LEN..(c + 1) * n * CV_LEN],
            );
        }
        // Parents of chunks (0,1) and (2,3), then the root over those two.
        self.parents.resize(2 * n * 2 * CV_LEN, 0);
        for half in 0..2 {
            for i in 0..n {
                let dst = &mut self.parents[(half * n + i) * 2 * CV_LEN..][..2 * CV_LEN];
                let left = &self.chunk_cvs[(2 * half * n + i) * CV_LEN..][..CV_LEN];
                let right = &self.chunk_cvs[((2 * half + 1) * n + i) * CV_LEN..][..CV_LEN];
                dst[..CV_LEN].copy_from_slice(left);
                dst[CV_LEN..].copy_from_slice(right);
            }
        }
        self.out.resize(2 * n * CV_LEN, 0);
        self.hash_blocks(PARENT, 2 * n);
        // Root blocks: (parent01, parent23) of each page.
        self.parents.truncate(0);
        self.parents.resize(n * 2 * CV_LEN, 0);
        for i in 0..n {
            let dst = &mut self.parents[i * 2 * CV_LEN..][..2 * CV_LEN];
            dst[..CV_LEN].copy_from_slice(&self.out[i * CV_LEN..][..CV_LEN]);
            dst[CV_LEN..].copy_from_slice(&self.out[(n + i) * CV_LEN..][..CV_LEN]);
        }
        self.hash_blocks(PARENT | ROOT, n);
        for (i, o) in out.iter_mut().enumerate() {
            *o = truncate(&self.out[i * CV_LEN..][..CV_LEN]);
        }
    }

    /// Hashes pages, sparing the all-zero ones (their hash is a constant): `out[i]` gets
    /// page i's hash and whether it is all zeros.
    pub fn hash_or_zero(&mut self, pages: &[&[u8]], out: &mut Vec<(PageHash, bool)>) {
        out.clear();
        let mut nonzero: Vec<&[u8]> = Vec::with_capacity(pages.len());
        for p in pages {
            let z = is_zero(p);
            out.push((if z { zero_page_hash() } else { [0; 16] }, z));
            if !z {
                nonzero.push(p);
            }
        }
        let mut hashes = vec![[0u8; 16]; nonzero.len()];
        self.hash_pages(&nonzero, &mut hashes);
        let mut next = hashes.into_iter();
        for slot in out.iter_mut().filter(|(_, z)| !z) {
            slot.0 = next.next().unwrap_or_default();
        }
    }

    /// Compresses `count` 64-byte blocks from `self.parents` into `self.out`.
    fn hash_blocks(&mut self, flags: u8, count: usize) {
        let blocks: Vec<&[u8; 2 * CV_LEN]> = self.parents[..count * 2 * CV_LEN]
            .chunks_exact(2 * CV_LEN)
            .map(|b| b.try_into().expect("64-byte block"))
            .collect();
        self.platform.hash_many(
            &blocks,
            &IV,
            0,
            IncrementCounter::No,
            flags,
            0,
            0,
            &mut self.out[..count * CV_LEN],
        );
    }
}

fn chunk(page: &[u8], c: usize) -> &[u8; CHUNK_LEN] {
    page[c * CHUNK_LEN..(c + 1) * CHUNK_LEN]
        .try_into()
        .expect("page holds four chunks")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(n: usize) -> Vec<u8> {
        // A xorshift stream: distinct, reproducible page contents.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n * PAGE_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn batched_hashes_equal_blake3() {
        for n in [1, 3, 4, 5, 16, 17, 64] {
            let data = pages(n);
            let refs: Vec<&[u8]> = data.chunks_exact(PAGE_SIZE).collect();
            let mut out = vec![[0u8; 16]; n];
            PageHasher::new().hash_pages(&refs, &mut out);
            for (p, h) in refs.iter().zip(&out) {
                assert_eq!(&blake3::hash(p).as_bytes()[..16], h, "batch of {n}");
            }
        }
    }

    #[test]
    fn zero_detection() {
        let mut page = vec![0u8; PAGE_SIZE + 1];
        assert!(is_zero(&page[1..]));
        page[PAGE_SIZE] = 1;
        assert!(!is_zero(&page[1..]));
        page[PAGE_SIZE] = 0;
        page[1] = 1;
        assert!(!is_zero(&page[1..]));
    }
}
