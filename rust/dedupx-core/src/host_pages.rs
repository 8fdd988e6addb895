//! The `pages` rows of one process after pass 1: its pagemap read again, a window of
//! address space at a time, each row with its PFN's pass-1 flags, count and hash.

use crate::error::{Result, ScanError};
use crate::host_scan::{HostProcess, HostScan};
use crate::page_table::{PageTable, NO_HASH};
use crate::pagemap::Pagemap;

impl HostScan {
    /// Address windows that split a process's mappings into pieces of at most `max_pages`
    /// virtual pages, so that its `pages` rows can be produced a piece at a time.
    pub fn page_windows(p: &HostProcess, max_pages: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut used = 0;
        for vma in p.vmas.iter().filter(|v| v.in_pagemap()) {
            let mut start = vma.start;
            while start < vma.end {
                let room = max_pages - used;
                let end = vma.end.min(start + room * crate::PAGE_SIZE as u64);
                match out.last_mut() {
                    Some(last) if used > 0 => last.1 = end,
                    _ => out.push((start, end)),
                }
                used += (end - start) / crate::PAGE_SIZE as u64;
                if used >= max_pages {
                    used = 0;
                }
                start = end;
            }
        }
        out
    }

    /// The `pages` rows of one process within `[start, end)`: its pagemap read again, each
    /// row with its PFN's pass-1 flags, count and hash. PFNs it maps now that pass 1 did
    /// not see get fresh flags and counts and no hash. A process that has exited since
    /// pass 1 has no rows.
    pub fn process_pages(&self, p: &HostProcess, start: u64, end: u64) -> Result<PageTable> {
        match self.read_process_pages(p, start, end) {
            // Exited since pass 1: it simply has no pages now.
            Err(ScanError::ProcessGone { .. } | ScanError::NoSuchProcess { .. }) => {
                Ok(PageTable::default())
            }
            read => read,
        }
    }

    fn read_process_pages(&self, p: &HostProcess, start: u64, end: u64) -> Result<PageTable> {
        let kpage = &self.kpage;
        let pid = p.info.pid;
        let mut vma_id = Vec::new();
        let mut vaddr = Vec::new();
        let mut entries = Vec::new();
        if !p.vmas.is_empty() {
            let pagemap = Pagemap::open(&self.proc_root, pid)?;
            for (id, vma) in p
                .vmas
                .iter()
                .enumerate()
                .filter(|(_, v)| v.in_pagemap() && v.end > start && v.start < end)
            {
                pagemap.for_each_mapped(vma.start.max(start), vma.end.min(end), |va, e| {
                    vma_id.push(id as u32);
                    vaddr.push(va);
                    entries.push(e);
                })?;
            }
        }
        // Each row's PFN looked up once among pass 1's PFNs.
        let slots: Vec<Option<usize>> = entries
            .iter()
            .map(|e| e.pfn().and_then(|pfn| self.pfns.binary_search(&pfn).ok()))
            .collect();
        let mut fresh: Vec<u64> = entries
            .iter()
            .zip(&slots)
            .filter(|(_, s)| s.is_none())
            .filter_map(|(e, _)| e.pfn())
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        let fresh_flags = kpage.read_flags(&fresh)?;
        let mut fresh_counts = kpage.read_counts(&fresh)?;
        self.own.correct(&fresh, &mut fresh_counts);
        let n = entries.len();
        let mut t = PageTable {
            pfn: Vec::with_capacity(n),
            kpageflags: Vec::with_capacity(n),
            mapcount: Vec::with_capacity(n),
            hash_slot: Vec::with_capacity(n),
            ..PageTable::default()
        };
        for (row, e) in entries.iter().enumerate() {
            t.present.push(e.present());
            t.frame.push(e.present());
            t.swapped.push(e.swapped());
            t.file_shared.push(e.file_shared());
            t.exclusive.push(e.exclusive());
            t.pfn.push(e.pfn().unwrap_or(0));
            let (f, c, slot) = match (e.pfn(), slots[row]) {
                (_, Some(s)) => self.mapped_row(s),
                (Some(pfn), None) => {
                    let i = fresh.binary_search(&pfn).unwrap_or(0);
                    (
                        fresh_flags.get(i).copied().unwrap_or(0),
                        fresh_counts.get(i).copied().unwrap_or(0),
                        NO_HASH,
                    )
                }
                (None, None) => (0, 0, NO_HASH),
            };
            t.kpageflags.push(f);
            t.mapcount.push(c);
            t.hash_slot.push(slot);
            t.zero.push(slot != NO_HASH && self.zero.get(slot as usize));
        }
        t.vma_id = vma_id;
        t.vaddr = vaddr;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{Vma, VmaKind};
    use crate::proc_info::ProcInfo;

    fn vma(start_page: u64, pages: u64) -> Vma {
        Vma {
            start: start_page * 4096,
            end: (start_page + pages) * 4096,
            perms: "rw-p".into(),
            offset: 0,
            dev: "00:00".into(),
            inode: 0,
            path: String::new(),
            kind: VmaKind::Anon,
            vm_flags: Vec::new(),
            rss_kb: 0,
            pss_kb: 0,
            swap_kb: 0,
            anon_huge_kb: 0,
            kernel_page_kb: 0,
            shared_hugetlb_kb: 0,
            private_hugetlb_kb: 0,
        }
    }

    #[test]
    fn page_windows_split_big_and_group_small_mappings() {
        let p = HostProcess {
            info: ProcInfo {
                pid: 1,
                ppid: 0,
                comm: String::new(),
                cmdline: Vec::new(),
            },
            cgroup: String::new(),
            pid_ns: 0,
            vmas: vec![vma(0, 3), vma(10, 4), vma(100, 25)],
            fingerprint: Default::default(),
            vma_present: Vec::new(),
            changes: Default::default(),
        };
        let w = HostScan::page_windows(&p, 10);
        let pages: Vec<(u64, u64)> = w.iter().map(|&(a, b)| (a / 4096, b / 4096)).collect();
        // [0,3) and [10,14) share a window; [100,125) is cut after 3 more pages, then by 10s.
        assert_eq!(pages, vec![(0, 103), (103, 113), (113, 123), (123, 125)]);
    }
}
