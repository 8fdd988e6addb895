//! The `pages` frame as column vectors, ready to become Arrow buffers without copying.

use crate::bitmap::BitVec;
use crate::page_hash::{zero_page_hash, PageHash};
use crate::pagemap::PagemapEntry;

/// `hash_slot` value of a page whose content was not hashed.
pub const NO_HASH: u32 = u32::MAX;

/// One row per mapped virtual page that is present or swapped.
/// `pfn`, `kpageflags` and `mapcount` mean something only where `frame`: a present page's
/// PFN, or a swapped page's swap slot (`swap_area::slot_key`) where the scan resolved it.
/// A page's hash is `hashes[hash_slot]`: pages that share a PFN share a slot, so each
/// distinct hash is stored once.
#[derive(Debug, Default)]
pub struct PageTable {
    pub vma_id: Vec<u32>,
    pub vaddr: Vec<u64>,
    pub pfn: Vec<u64>,
    pub present: BitVec,
    /// The page has a frame: present, or swapped to a known slot.
    pub frame: BitVec,
    pub swapped: BitVec,
    pub file_shared: BitVec,
    pub exclusive: BitVec,
    pub kpageflags: Vec<u64>,
    pub mapcount: Vec<u64>,
    pub hash_slot: Vec<u32>,
    /// 16 bytes per distinct PFN, in the order of the sorted distinct PFNs.
    pub hashes: Vec<u8>,
    pub zero: BitVec,
}

impl PageTable {
    pub fn len(&self) -> usize {
        self.vaddr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vaddr.is_empty()
    }

    /// The table with each page's mapping and address (see [`assemble`]).
    pub fn addressed(self, vma_id: Vec<u32>, vaddr: Vec<u64>) -> Self {
        debug_assert_eq!(vma_id.len(), self.pfn.len());
        Self {
            vma_id,
            vaddr,
            ..self
        }
    }
}

/// What each distinct PFN holds (same order as the sorted distinct PFNs): its hash where
/// `hashed`.
pub struct Contents {
    pub hashes: Vec<PageHash>,
    pub hashed: Vec<bool>,
}

impl Contents {
    pub fn unread(n: usize) -> Self {
        Self {
            hashes: vec![[0; 16]; n],
            hashed: vec![false; n],
        }
    }
}

/// Per distinct frame (present PFNs in sorted order, then swap slots): flags, map count,
/// content, and the swap slots' keys (`swap_area::slot_key`).
pub struct FrameColumns {
    pub flags: Vec<u64>,
    pub counts: Vec<u64>,
    pub contents: Contents,
    pub swap_keys: Vec<u64>,
}

/// Builds the table column by column, dropping each input as soon as it is used up, so
/// that the peak stays near the size of the result.
/// `vma_id` and `vaddr` are left empty for the caller to move in (see
/// [`PageTable::addressed`]): they may still be in use, as `entries` may, while this runs.
pub fn assemble(entries: &[PagemapEntry], mut uidx: Vec<u32>, frames: FrameColumns) -> PageTable {
    let FrameColumns {
        flags,
        counts,
        contents,
        swap_keys,
    } = frames;
    let n = entries.len();
    // Frames past the present PFNs are swap slots, in the order of `swap_keys`.
    let present_frames = flags.len() - swap_keys.len();
    let mut frame = BitVec::with_capacity(n);
    let mut present = BitVec::with_capacity(n);
    let mut swapped = BitVec::with_capacity(n);
    let mut file_shared = BitVec::with_capacity(n);
    let mut exclusive = BitVec::with_capacity(n);
    let mut pfn = Vec::with_capacity(n);
    for (e, &u) in entries.iter().zip(&uidx) {
        present.push(e.present());
        swapped.push(e.swapped());
        file_shared.push(e.file_shared());
        exclusive.push(e.exclusive());
        frame.push(u != NO_HASH);
        let slot = (u as usize)
            .checked_sub(present_frames)
            .filter(|_| u != NO_HASH);
        pfn.push(match slot {
            Some(j) => swap_keys[j],
            None => e.pfn().unwrap_or(0),
        });
    }
    let per_pfn = |values: Vec<u64>| -> Vec<u64> {
        uidx.iter()
            .map(|&u| if u == NO_HASH { 0 } else { values[u as usize] })
            .collect()
    };
    let kpageflags = per_pfn(flags);
    let mapcount = per_pfn(counts);
    // uidx becomes hash_slot in place: the slot of a page is its PFN's index, if hashed.
    for u in uidx.iter_mut() {
        if *u != NO_HASH && !contents.hashed[*u as usize] {
            *u = NO_HASH;
        }
    }
    let zero_hash = zero_page_hash();
    let zero = uidx
        .iter()
        .map(|&s| s != NO_HASH && contents.hashes[s as usize] == zero_hash)
        .collect();
    PageTable {
        vma_id: Vec::new(),
        vaddr: Vec::new(),
        pfn,
        present,
        frame,
        swapped,
        file_shared,
        exclusive,
        kpageflags,
        mapcount,
        hash_slot: uidx,
        hashes: contents.hashes.into_flattened(),
        zero,
    }
}
