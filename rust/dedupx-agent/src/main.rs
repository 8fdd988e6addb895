//! dedupx-agent: run inside a guest (as root), it writes one file that dedupx on the host
//! reads with `--guest FILE`: the guest's /proc/kpageflags and /proc/kpagecount for every
//! page frame, per-process anon/file sizes, /proc/meminfo, whether MGLRU is on, and, where
//! the guest has /proc/kcore, a BLAKE3 hash of every guest-physical page of RAM.
//!
//! It needs no Python and, built static, nothing from the guest but its kernel.

use std::fs;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dedupx_core::agent_file::{self, AgentData};
use dedupx_core::bitmap::BitVec;
use dedupx_core::iomem;
use dedupx_core::kpageflags::KpageFiles;
use dedupx_core::phys_image::PhysImage;

const USAGE: &str = "usage: dedupx-agent -o FILE [--no-hash] [--proc-root DIR]
  -o FILE          where to write (a file, or a device such as /dev/ttyS1)
  --no-hash        do not read page contents through /proc/kcore
  --proc-root DIR  where procfs is mounted (default /proc)";

struct Args {
    out: PathBuf,
    hash: bool,
    proc_root: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut out = None;
    let mut hash = true;
    let mut proc_root = PathBuf::from("/proc");
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => out = Some(PathBuf::from(it.next().ok_or("-o needs a file")?)),
            "--no-hash" => hash = false,
            "--proc-root" => proc_root = PathBuf::from(it.next().ok_or("--proc-root needs a dir")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        out: out.ok_or("-o FILE is required")?,
        hash,
        proc_root,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("dedupx-agent: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dedupx-agent: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let root = &args.proc_root;
    let iomem_text = read_text(&root.join("iomem"))?;
    let ram = iomem::system_ram(&iomem_text)
        .map_err(|e| format!("{} line {}: {e}", root.join("iomem").display(), e.line()))?;
    let max_pfn = ram.iter().map(|&(_, end)| end / 4096).max().unwrap_or(0);
    if max_pfn == 0 {
        return Err(format!(
            "{} shows no System RAM (run as root)",
            root.join("iomem").display()
        ));
    }
    // Flags before contents: reading a page through kcore may change what flags say.
    // meminfo is read just before and just after the flags, to bracket them.
    let kpage = KpageFiles::open(root).map_err(|e| e.to_string())?;
    let meminfo_before = meminfo_json(root);
    let pfns: Vec<u64> = (0..max_pfn).collect();
    let kpageflags = kpage.read_flags(&pfns).map_err(|e| e.to_string())?;
    let kpagecount = kpage.read_counts(&pfns).map_err(|e| e.to_string())?;
    let mut data = AgentData {
        kpageflags,
        kpagecount,
        ..AgentData::default()
    };
    let (hash_source, hash_error) = if args.hash {
        match hash_kcore(&root.join("kcore"), &ram, max_pfn, &mut data) {
            Ok(()) => (Some("kcore"), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    data.meta_json = meta_json(
        root,
        &ram,
        &meminfo_before,
        hash_source,
        hash_error.as_deref(),
    );
    write_out(&args.out, &data).map_err(|e| format!("cannot write {}: {e}", args.out.display()))
}

fn hash_kcore(
    kcore: &Path,
    ram: &[(u64, u64)],
    max_pfn: u64,
    d: &mut AgentData,
) -> Result<(), String> {
    let img = PhysImage::open_kcore(kcore, ram).map_err(|e| e.to_string())?;
    let t = img.hash_frames(&|_, _| true).map_err(|e| e.to_string())?;
    d.hashes = vec![0u8; max_pfn as usize * 16];
    let mut hashed = vec![false; max_pfn as usize];
    for (row, &pfn) in t.pfn.iter().enumerate() {
        if pfn < max_pfn {
            d.hashes[pfn as usize * 16..][..16].copy_from_slice(&t.hash(row));
            hashed[pfn as usize] = true;
        }
    }
    d.hashed = hashed.into_iter().collect::<BitVec>();
    Ok(())
}

fn read_text(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A regular file is written beside and renamed into place, so a half-written file never
/// looks complete; a device (a serial port to the host) is written straight.
fn write_out(path: &Path, d: &AgentData) -> io::Result<()> {
    let regular = fs::metadata(path).map(|m| m.is_file()).unwrap_or(true);
    if !regular {
        let mut f = BufWriter::new(fs::OpenOptions::new().write(true).open(path)?);
        return agent_file::write(&mut f, d);
    }
    let tmp = path.with_extension("partial");
    {
        let mut f = BufWriter::new(fs::File::create(&tmp)?);
        agent_file::write(&mut f, d)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&tmp, path)
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn meminfo_json(root: &Path) -> String {
    let fields: Vec<String> = fs::read_to_string(root.join("meminfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
            Some(format!("{}:{kb}", json_str(k.trim())))
        })
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn meta_json(
    root: &Path,
    ram: &[(u64, u64)],
    meminfo_before: &str,
    hash_source: Option<&str>,
    hash_error: Option<&str>,
) -> String {
    let kernel = fs::read_to_string(root.join("sys/kernel/osrelease")).unwrap_or_default();
    let lru_gen = fs::read_to_string("/sys/kernel/mm/lru_gen/enabled")
        .map(|s| json_str(s.trim()))
        .unwrap_or_else(|_| "null".into());
    let ram_pfns: Vec<String> = ram
        .iter()
        .map(|&(a, b)| format!("[{},{}]", a.div_ceil(4096), b / 4096))
        .collect();
    let opt = |v: Option<&str>| v.map(json_str).unwrap_or_else(|| "null".into());
    format!(
        "{{\"created_by\":{},\"kernel\":{},\"page_size\":4096,\"ram_pfns\":[{}],\"meminfo_before_kb\":{},\"meminfo_kb\":{},\"lru_gen\":{},\"hash_source\":{},\"hash_error\":{},\"processes\":[{}]}}",
        json_str(concat!("dedupx-agent ", env!("CARGO_PKG_VERSION"))),
        json_str(kernel.trim()),
        ram_pfns.join(","),
        meminfo_before,
        meminfo_json(root),
        lru_gen,
        opt(hash_source),
        opt(hash_error),
        processes_json(root).join(","),
    )
}

/// Per process: RssAnon, RssFile and RssShmem from /proc/PID/status (kernel threads have none).
fn processes_json(root: &Path) -> Vec<String> {
    let Ok(dir) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status.lines().find_map(|l| {
                l.strip_prefix(key)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
        };
        let Some(anon) = field("RssAnon:") else {
            continue;
        };
        let comm = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("")
            .trim();
        out.push(format!(
            "{{\"pid\":{pid},\"comm\":{},\"rss_anon_kb\":{anon},\"rss_file_kb\":{},\"rss_shmem_kb\":{}}}",
            json_str(comm),
            field("RssFile:").unwrap_or(0),
            field("RssShmem:").unwrap_or(0),
        ));
    }
    out
}
