//! Small per-process facts: name and command line.

use std::fs;
use std::path::Path;

use crate::error::{Result, ScanError};

#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
}

pub fn read_proc_info(proc_root: &Path, pid: u32) -> Result<ProcInfo> {
    let dir = proc_root.join(pid.to_string());
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read(&path).map_err(|e| ScanError::from_proc_io(pid, path, e))
    };
    let comm = String::from_utf8_lossy(&read("comm")?)
        .trim_end()
        .to_string();
    let cmdline = read("cmdline")?
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let stat = String::from_utf8_lossy(&read("stat")?).into_owned();
    Ok(ProcInfo {
        pid,
        ppid: parse_ppid(&stat).unwrap_or(0),
        comm,
        cmdline,
    })
}

/// The fourth field of `/proc/PID/stat`, after the parenthesised comm, which may itself
/// hold spaces and parentheses.
fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_survives_odd_comm() {
        assert_eq!(parse_ppid("42 (a) b (c)) S 7 42 42 0"), Some(7));
    }

    #[test]
    fn reads_self() {
        let me = read_proc_info(Path::new("/proc"), std::process::id()).expect("self");
        assert!(!me.comm.is_empty());
        assert!(!me.cmdline.is_empty());
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
    }
}
