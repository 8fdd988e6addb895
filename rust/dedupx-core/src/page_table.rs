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

/// Per distinct frame (present PFNs in sorted order, then swap slots): flags, map count and
/// content.
pub struct FrameColumns {
    pub flags: Vec<u64>,
    pub counts: Vec<u64>,
    pub contents: Contents,
}

/// What pagemap says of each page: its frame (a PFN, or a swap slot's key) and its bits.
pub struct PageRows {
    pub pfn: Vec<u64>,
    pub present: BitVec,
    pub frame: BitVec,
    pub swapped: BitVec,
    pub file_shared: BitVec,
    pub exclusive: BitVec,
}

impl PageRows {
    /// `uidx[i]` is page i's frame (`NO_HASH`: none); frames from `present_frames` on are
    /// swap slots, in the order of `swap_keys`. The entries' memory becomes the `pfn`
    /// column: a scan's peak is not raised by both at once.
    pub fn from_entries(
        entries: Vec<PagemapEntry>,
        uidx: &[u32],
        present_frames: usize,
        swap_keys: &[u64],
    ) -> Self {
        let n = entries.len();
        let mut rows = Self {
            pfn: Vec::new(),
            present: BitVec::with_capacity(n),
            frame: BitVec::with_capacity(n),
            swapped: BitVec::with_capacity(n),
            file_shared: BitVec::with_capacity(n),
            exclusive: BitVec::with_capacity(n),
        };
        // An entry and a PFN are both a u64: the standard library collects this in place
        // (an optimisation it makes, not one it promises; without it only the peak rises).
        let mut pfn: Vec<u64> = entries.into_iter().map(|e| e.0).collect();
        for (word, &u) in pfn.iter_mut().zip(uidx) {
            let e = PagemapEntry(*word);
            rows.present.push(e.present());
            rows.swapped.push(e.swapped());
            rows.file_shared.push(e.file_shared());
            rows.exclusive.push(e.exclusive());
            rows.frame.push(u != NO_HASH);
            let slot = (u as usize)
                .checked_sub(present_frames)
                .filter(|_| u != NO_HASH);
            *word = match slot {
                Some(j) => swap_keys[j],
                None => e.pfn().unwrap_or(0),
            };
        }
        rows.pfn = pfn;
        rows
    }

    /// Page i's PFN if it is present, as a re-reading of pagemap would give it.
    pub fn present_pfn(&self, i: usize) -> Option<u64> {
        self.present.get(i).then(|| self.pfn[i])
    }
}

/// Each page's share of its frame's columns: flags, map count, hash slot, zero content.
pub struct FrameValues {
    pub kpageflags: Vec<u64>,
    pub mapcount: Vec<u64>,
    pub hash_slot: Vec<u32>,
    pub hashes: Vec<u8>,
    pub zero: BitVec,
}

impl FrameValues {
    /// `uidx` (page i's frame, or `NO_HASH`) becomes the hash slots in place; each input is
    /// dropped as soon as it is used up, so that the peak stays near the size of the result.
    pub fn spread(mut uidx: Vec<u32>, frames: FrameColumns) -> Self {
        let FrameColumns {
            flags,
            counts,
            contents,
        } = frames;
        let per_frame = |values: Vec<u64>| -> Vec<u64> {
            uidx.iter()
                .map(|&u| if u == NO_HASH { 0 } else { values[u as usize] })
                .collect()
        };
        let kpageflags = per_frame(flags);
        let mapcount = per_frame(counts);
        // The slot of a page is its frame's index, if hashed.
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
        Self {
            kpageflags,
            mapcount,
            hash_slot: uidx,
            hashes: contents.hashes.into_flattened(),
            zero,
        }
    }
}

impl PageTable {
    pub fn new(vma_id: Vec<u32>, vaddr: Vec<u64>, rows: PageRows, values: FrameValues) -> Self {
        debug_assert!(vma_id.len() == rows.pfn.len() && values.kpageflags.len() == rows.pfn.len());
        Self {
            vma_id,
            vaddr,
            pfn: rows.pfn,
            present: rows.present,
            frame: rows.frame,
            swapped: rows.swapped,
            file_shared: rows.file_shared,
            exclusive: rows.exclusive,
            kpageflags: values.kpageflags,
            mapcount: values.mapcount,
            hash_slot: values.hash_slot,
            hashes: values.hashes,
            zero: values.zero,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_values_follow_each_page_to_its_frame() {
        let present = |pfn: u64| PagemapEntry((1 << 63) | (1 << 56) | pfn);
        let file = |pfn: u64| PagemapEntry((1 << 63) | (1 << 61) | pfn);
        let swapped = PagemapEntry(1 << 62);
        // Pages: PFN 7, PFN 3 (a file's, mapped elsewhere too), a swapped page in slot frame
        // 2, PFN 7 again, a page the scan gave no frame. Frames: PFN 3, PFN 7, one swap slot.
        let entries = vec![present(7), file(3), swapped, present(7), swapped];
        let uidx = vec![1, 0, 2, 1, NO_HASH];
        let rows = PageRows::from_entries(entries, &uidx, 2, &[0xabc]);
        assert_eq!(rows.pfn, vec![7, 3, 0xabc, 7, 0]);
        let bits = |b: &BitVec| (0..5).map(|i| b.get(i)).collect::<Vec<_>>();
        assert_eq!(bits(&rows.present), [true, true, false, true, false]);
        assert_eq!(bits(&rows.frame), [true, true, true, true, false]);
        assert_eq!(bits(&rows.swapped), [false, false, true, false, true]);
        assert_eq!(bits(&rows.exclusive), [true, false, false, true, false]);
        assert_eq!(bits(&rows.file_shared), [false, true, false, false, false]);
        assert_eq!(
            (0..5).map(|i| rows.present_pfn(i)).collect::<Vec<_>>(),
            [Some(7), Some(3), None, Some(7), None]
        );

        let mut contents = Contents::unread(3);
        contents.hashes[0] = zero_page_hash();
        contents.hashed[0] = true;
        contents.hashes[1] = [9; 16];
        contents.hashed[1] = true;
        let frames = FrameColumns {
            flags: vec![30, 70, 99],
            counts: vec![1, 2, 1],
            contents,
        };
        let values = FrameValues::spread(uidx, frames);
        assert_eq!(values.kpageflags, vec![70, 30, 99, 70, 0]);
        assert_eq!(values.mapcount, vec![2, 1, 1, 2, 0]);
        // The swap slot's content was not read: no hash slot.
        assert_eq!(values.hash_slot, vec![1, 0, NO_HASH, 1, NO_HASH]);
        assert_eq!(bits(&values.zero), [false, true, false, false, false]);
        assert_eq!(values.hashes.len(), 3 * 16);
    }
}
