//! Python bindings for dedupx-core. This crate converts arguments and results; the work
//! happens in the core with the GIL released.

mod errors;
mod frames;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use dedupx_core::process_scan::{scan_process, ScanOptions};

/// How often a Python progress callback runs at most: often enough for a smooth bar and
/// a prompt Ctrl-C, rarely enough to cost nothing.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Scans one process; returns a dict with `vmas` and `pages` (Arrow tables), `info` and
/// `stats` (dicts). `progress(stage, done, total)` is called now and then; an exception it
/// raises, or Ctrl-C, stops the scan.
#[pyfunction]
#[pyo3(signature = (pid, *, threads=0, hash=true, proc_root="/proc".to_string(), progress=None))]
fn scan_process_frames<'py>(
    py: Python<'py>,
    pid: u32,
    threads: usize,
    hash: bool,
    proc_root: String,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = ScanOptions {
        proc_root: PathBuf::from(proc_root),
        threads,
        hash,
    };
    let failure: Mutex<Option<PyErr>> = Mutex::new(None);
    let last = Mutex::new(Instant::now() - PROGRESS_INTERVAL);
    let report = |stage: &str, done: u64, total: u64| -> bool {
        {
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            if done != 0 && done != total && last.elapsed() < PROGRESS_INTERVAL {
                return true;
            }
            *last = Instant::now();
        }
        Python::attach(|py| {
            let outcome = py.check_signals().and_then(|()| match &progress {
                Some(cb) => cb.call1(py, (stage, done, total)).map(drop),
                None => Ok(()),
            });
            match outcome {
                Ok(()) => true,
                Err(e) => {
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    false
                }
            }
        })
    };
    let result = py.detach(|| scan_process(pid, &opts, &report));
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let scan = result.map_err(errors::to_py)?;
    frames::process_scan_to_dict(py, scan)
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

#[pymodule]
mod _dedupx {
    #[pymodule_export]
    use super::scan_process_frames;

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::prelude::*;
        super::fix_mmap_threshold();
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("PAGE_SIZE", dedupx_core::PAGE_SIZE)?;
        Ok(())
    }
}
