//! Python bindings for dedupx-core. This crate converts arguments and results; the work
//! happens in the core with the GIL released.

mod errors;
mod frames;
mod host;

mod progress;

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use dedupx_core::parallel::in_pool;
use dedupx_core::phys_image::{ImageError, ImageFormat, PhysImage};
use dedupx_core::process_scan::{scan_process, ScanOptions};
use progress::ProgressBridge;

/// Scans one process; returns a dict with `vmas` and `pages` (Arrow tables), `info` and
/// `stats` (dicts). `progress(stage, done, total)` is called now and then; an exception it
/// raises, or Ctrl-C, stops the scan.
#[pyfunction]
#[pyo3(signature = (pid, *, threads=0, hash=true, proc_root=None, progress=None))]
fn scan_process_frames<'py>(
    py: Python<'py>,
    pid: u32,
    threads: usize,
    hash: bool,
    proc_root: Option<PathBuf>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = ScanOptions {
        proc_root: proc_root.unwrap_or_else(|| PathBuf::from("/proc")),
        threads,
        hash,
        ..ScanOptions::default()
    };
    let bridge = ProgressBridge::new(progress);
    let result = py.detach(|| scan_process(pid, &opts, &|s, d, t| bridge.report(s, d, t)));
    let scan = bridge.finish(result, errors::to_py)?;
    frames::process_scan_to_dict(py, scan)
}

/// Reads and hashes the pages of a memory image (raw, ELF core, LiME; detected by magic
/// unless `format` names one): all of them, or `count` from page `start` (pages counted
/// across segments in order). Returns `frames` (pfn, hash, zero), `format`, `pages` (in
/// the whole image) and `segments` (list of (paddr, bytes)).
#[pyfunction]
#[pyo3(signature = (path, *, format=None, threads=0, progress=None, start=0, count=None))]
fn image_frames<'py>(
    py: Python<'py>,
    path: PathBuf,
    format: Option<String>,
    threads: usize,
    progress: Option<Py<PyAny>>,
    start: u64,
    count: Option<u64>,
) -> PyResult<Bound<'py, PyDict>> {
    let format = match format.as_deref() {
        None => None,
        Some(name) => Some(ImageFormat::parse(name).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown image format {name:?}: use raw, elf or lime"
            ))
        })?),
    };
    let bridge = ProgressBridge::new(progress);
    let result = py.detach(|| -> Result<_, ImageError> {
        let image = PhysImage::open(&path, format)?;
        let count = count.unwrap_or(u64::MAX);
        let table = in_pool(threads, || {
            image.hash_window(start, count, &|d, t| bridge.report("hash", d, t))
        })??;
        Ok((image, table))
    });
    let (image, table) = bridge.finish(result, errors::image_to_py)?;
    frames::image_to_dict(py, &image, table)
}

/// glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after
/// which a scan's multi-MiB vectors come from heaps and per-thread arenas that keep their
/// memory when freed: a 1 GiB scan then held ~120 bytes per page instead of ~60. A fixed
/// threshold keeps large blocks mmapped and returned to the system when freed.
fn fix_mmap_threshold() {
    // SAFETY: mallopt only adjusts allocator parameters; it is called once at import.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

/// The machine's limit for a process scan, for benchmarks: copies `pages` present pages
/// of `pid` from `start` with `process_vm_readv` and hashes them on `threads` threads
/// (0: one per core), with no metadata. Returns the seconds it took.
#[pyfunction]
#[pyo3(signature = (pid, start, pages, *, threads=0, skip_zero=false))]
fn copy_and_hash_limit(
    py: Python<'_>,
    pid: u32,
    start: u64,
    pages: usize,
    threads: usize,
    skip_zero: bool,
) -> PyResult<f64> {
    let run = py
        .detach(|| {
            in_pool(threads, || {
                dedupx_core::machine_limit::copy_and_hash(pid, start, pages, skip_zero)
            })
        })
        .map_err(|e| PyValueError::new_err(e.to_string()))?
        .map_err(|e| PyValueError::new_err(format!("copy of process {pid} failed: {e}")))?;
    Ok(run.seconds)
}

/// Reads a file written by dedupx-agent inside a guest.
#[pyfunction]
fn read_agent_file(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let data = py
        .detach(|| dedupx_core::agent_file::read(&path))
        .map_err(errors::agent_to_py)?;
    frames::agent_to_dict(py, data)
}

#[pymodule]
mod _dedupx {
    #[pymodule_export]
    use super::{copy_and_hash_limit, image_frames, read_agent_file, scan_process_frames};
    #[pymodule_export]
    use crate::host::HostSnapshot;

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::prelude::*;
        super::fix_mmap_threshold();
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("PAGE_SIZE", dedupx_core::PAGE_SIZE)?;
        Ok(())
    }
}
