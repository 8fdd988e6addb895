//! The host's page cache without /proc/kcore: every regular file of the local disk
//! filesystems is asked how much of it is cached (`cachestat`, Linux 6.5+; else `mincore`
//! decides), and the cached pages of those that have any are hashed
//! ([`crate::file_cache`]), as `fincore` finds them. Memory-backed filesystems (tmpfs,
//! hugetlbfs) are left out: their pages are shmem, which a guest's RAM may be, and are
//! counted by the processes that map them.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::file_cache::{cached_pages_of, cachestat, open_for_cache};
use crate::page_hash::PageHash;
use crate::pagemap::Pagemap;
use crate::proc_escape::unescape_octal;
use crate::stages::{check, Interrupted, Progress};

/// Filesystems whose files live on a disk (or an image of one): their page cache is what
/// this walk is for.
const DISK_FILESYSTEMS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "vfat", "exfat", "jfs", "reiserfs", "nilfs2",
    "squashfs", "erofs", "iso9660", "udf", "ntfs3", "bcachefs",
];

/// What the walk saw and hashed.
#[derive(Debug, Default, Clone)]
pub struct PageCacheReport {
    pub mounts: Vec<PathBuf>,
    pub files: u64,
    pub files_cached: u64,
    /// Pages the files had cached (by `cachestat` or `mincore`), and those hashed.
    pub pages_cached: u64,
    pub pages_hashed: u64,
    /// Cached when looked at, gone before they were read.
    pub pages_vanished: u64,
    /// Files or directories that could not be opened or read.
    pub unreadable: u64,
    /// Paths to a cached file already walked under another name (a hard link), not walked
    /// again.
    pub links_skipped: u64,
    pub seconds: f64,
}

/// One mount point per local disk filesystem (by device), from `mountinfo`: the mount of
/// the filesystem's root where there is one, so each file is walked once.
pub fn local_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut by_dev: HashMap<String, (String, PathBuf)> = HashMap::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|&f| f == "-") else {
            continue;
        };
        let (Some(dev), Some(root), Some(point), Some(fstype)) = (
            fields.get(2),
            fields.get(3),
            fields.get(4),
            fields.get(dash + 1),
        ) else {
            continue;
        };
        if !DISK_FILESYSTEMS.contains(fstype) {
            continue;
        }
        let point = PathBuf::from(unescape_octal(point));
        let better = by_dev
            .get(*dev)
            .is_none_or(|(r, p)| root.len() < r.len() || (root.len() == r.len() && point < *p));
        if better {
            by_dev.insert(dev.to_string(), (root.to_string(), point));
        }
    }
    let mut out: Vec<PathBuf> = by_dev.into_values().map(|(_, p)| p).collect();
    out.sort();
    out
}

/// Used inodes of the filesystem at `mount`: the walk's total, for progress.
fn used_inodes(mount: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path, `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_files.saturating_sub(st.f_ffree)
}

/// Walks every regular file under `mounts` (never crossing into another filesystem) and
/// gives `found` the cached pages (PFN, hash) of each that has any.
pub fn walk_page_cache(
    mounts: &[PathBuf],
    proc_root: &Path,
    progress: Progress,
    mut found: impl FnMut(&[(u64, u64, PageHash)]),
) -> Result<PageCacheReport, Interrupted> {
    let started = Instant::now();
    let mut report = PageCacheReport {
        mounts: mounts.to_vec(),
        ..Default::default()
    };
    let total: u64 = mounts.iter().map(|m| used_inodes(m)).sum();
    let Ok(own) = Pagemap::open(proc_root, std::process::id()) else {
        report.unreadable += 1;
        return Ok(report);
    };
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    for mount in mounts {
        let Ok(meta) = fs::symlink_metadata(mount) else {
            report.unreadable += 1;
            continue;
        };
        let dev = meta.dev();
        let mut dirs = vec![mount.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                report.unreadable += 1;
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let path = entry.path();
                if kind.is_dir() {
                    // Another filesystem mounted here is walked from its own mount, if local.
                    if fs::symlink_metadata(&path).is_ok_and(|m| m.dev() == dev) {
                        dirs.push(path);
                    }
                    continue;
                }
                if !kind.is_file() {
                    continue;
                }
                report.files += 1;
                if report.files % 4096 == 0 {
                    check(
                        progress,
                        "page cache",
                        report.files,
                        total.max(report.files),
                    )?;
                }
                let Ok(file) = open_for_cache(&path) else {
                    report.unreadable += 1;
                    continue;
                };
                if cachestat(&file, 0, 0) == Some(0) {
                    continue;
                }
                // A file with several names (cargo's target directories and git's objects
                // are full of them: 3.4 GiB on the development machine) is walked once;
                // its pages would otherwise be read and hashed once per name. Asked after
                // cachestat, so the files with nothing cached cost no stat.
                if let Ok(m) = file.metadata() {
                    if m.nlink() > 1 && !linked.insert((m.dev(), m.ino())) {
                        report.links_skipped += 1;
                        continue;
                    }
                }
                match cached_pages_of(&file, &path, &own) {
                    Ok(c) => {
                        let n = c.pages.len() as u64 + c.vanished;
                        if n > 0 {
                            report.files_cached += 1;
                            report.pages_cached += n;
                            report.pages_hashed += c.pages.len() as u64;
                            report.pages_vanished += c.vanished;
                            found(&c.pages);
                        }
                    }
                    Err(_) => report.unreadable += 1,
                }
            }
        }
    }
    check(progress, "page cache", report.files, report.files)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_one_mount_per_local_filesystem() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 254:0 /var/lib/x /srv/bind rw - ext4 /dev/vda rw
24 22 0:21 / /dev/shm rw - tmpfs tmpfs rw
25 22 254:16 /sub /mnt/data\\040disk rw - xfs /dev/vdb rw
26 22 0:5 / /proc rw - proc proc rw
";
        assert_eq!(
            local_mounts(info),
            vec![PathBuf::from("/"), PathBuf::from("/mnt/data disk")]
        );
    }

    /// Walks `dir` as a mount, then removes it: the report and the pages found.
    fn walk_and_remove(dir: &Path) -> (PageCacheReport, Vec<(u64, u64, PageHash)>) {
        let mut pages = Vec::new();
        let report = walk_page_cache(
            &[dir.to_path_buf()],
            Path::new("/proc"),
            &|_, _, _| true,
            |p| pages.extend_from_slice(p),
        )
        .expect("walks");
        fs::remove_dir_all(dir).ok();
        (report, pages)
    }

    #[test]
    fn finds_a_cached_file_under_a_mount() {
        let dir = std::env::temp_dir().join(format!("dedupx-walk-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).expect("dir");
        fs::write(dir.join("sub/f"), vec![7u8; 3 * crate::PAGE_SIZE]).expect("write");
        let (report, pages) = walk_and_remove(&dir);
        assert_eq!(report.files, 1);
        assert_eq!(report.pages_hashed, 3);
        assert_eq!(pages.len(), 3);
    }

    #[test]
    fn a_file_with_two_names_is_walked_once() {
        let dir = std::env::temp_dir().join(format!("dedupx-links-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join("a"), vec![7u8; 3 * crate::PAGE_SIZE]).expect("write");
        fs::hard_link(dir.join("a"), dir.join("b")).expect("link");
        let (report, pages) = walk_and_remove(&dir);
        assert_eq!(report.files, 2);
        assert_eq!(report.links_skipped, 1);
        assert_eq!(report.pages_hashed, 3);
        assert_eq!(pages.len(), 3);
    }
}
