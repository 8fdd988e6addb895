//! The whole-host snapshot as a Python object: pass 1 runs when it is made; pages and
//! frames are then handed out a piece at a time for Python to stream to Parquet.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{ArrayRef, StringArray, UInt32Array, UInt64Array};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_arrow::PyTable;

use dedupx_core::host_scan::{scan_host, HostScan};
use dedupx_core::iomem;
use dedupx_core::kpageflags::KpageFiles;
use dedupx_core::phys_image::{open_live, PhysImage};
use dedupx_core::process_scan::ScanOptions;

use crate::errors;
use crate::frames::{batch, bit_column, table, u64s, vmas_columns, HashStore};
use crate::progress::ProgressBridge;

#[pyclass(module = "dedupx._dedupx", frozen)]
pub struct HostSnapshot {
    scan: HostScan,
    kpage: KpageFiles,
    store: HashStore,
    phys: Option<PhysImage>,
    /// System RAM as PFN ranges.
    ram: Vec<(u64, u64)>,
    phys_notes: Vec<String>,
    /// Per file given to cover: (cached pages, pages) or why it could not be read.
    file_cache: Vec<dedupx_core::host_scan::CachedFileReport>,
}

impl HostSnapshot {
    fn process(&self, index: usize) -> PyResult<&dedupx_core::host_scan::HostProcess> {
        self.scan
            .processes
            .get(index)
            .ok_or_else(|| pyo3::exceptions::PyIndexError::new_err(index))
    }
}

#[pymethods]
impl HostSnapshot {
    /// Scans every process (pass 1). `phys` names a physical memory source to use instead
    /// of trying /proc/kcore, /dev/crash and /dev/mem; `iomem` a file to read System RAM
    /// ranges from instead of PROC_ROOT/iomem (both for tests and offline copies).
    #[new]
    #[pyo3(signature = (*, proc_root=None, dev_root=None, threads=0, hash=true, phys=None, iomem=None, cached_files=Vec::new(), progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        proc_root: Option<PathBuf>,
        dev_root: Option<PathBuf>,
        threads: usize,
        hash: bool,
        phys: Option<PathBuf>,
        iomem: Option<PathBuf>,
        cached_files: Vec<PathBuf>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let proc_root = proc_root.unwrap_or_else(|| PathBuf::from("/proc"));
        let dev_root = dev_root.unwrap_or_else(|| PathBuf::from("/dev"));
        let opts = ScanOptions {
            proc_root: proc_root.clone(),
            threads,
            hash,
        };
        let iomem_path = iomem.unwrap_or_else(|| proc_root.join("iomem"));
        let iomem_text = std::fs::read_to_string(&iomem_path).map_err(|e| {
            errors::DedupxIOError::new_err(format!("cannot read {}: {e}", iomem_path.display()))
        })?;
        let ram_bytes = iomem::system_ram(&iomem_text);
        if ram_bytes.iter().all(|&(_, b)| b == 0) {
            return Err(errors::PermissionDenied::new_err(format!(
                "{} shows no addresses: run dedupx as root",
                iomem_path.display()
            )));
        }
        let bridge = ProgressBridge::new(progress);
        let result = py.detach(|| {
            let kpage = KpageFiles::open(&proc_root)?;
            let scan = scan_host(&opts, &|s, d, t| bridge.report(s, d, t))?;
            Ok((kpage, scan))
        });
        let (kpage, mut scan) = bridge.finish(result, errors::to_py)?;
        let file_cache = py.detach(|| scan.add_cached_files(&cached_files));
        let (phys, phys_notes) = match phys {
            Some(path) => match PhysImage::open_kcore(&path, &ram_bytes) {
                Ok(img) => (Some(img), Vec::new()),
                Err(e) => return Err(errors::image_to_py(e)),
            },
            None => open_live(&proc_root, &dev_root, &ram_bytes),
        };
        let hashes = std::mem::take(&mut scan.contents.hashes).into_flattened();
        let store = HashStore::new(hashes);
        let ram = ram_bytes
            .iter()
            .map(|&(a, b)| (a.div_ceil(4096), b / 4096))
            .filter(|(a, b)| b > a)
            .collect();
        Ok(Self {
            scan,
            kpage,
            store,
            phys,
            ram,
            phys_notes,
            file_cache,
        })
    }

    /// Counters of pass 1 and the physical memory source (or why there is none).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.scan.stats;
        let d = PyDict::new(py);
        d.set_item("processes", s.processes)?;
        d.set_item("exited", s.exited)?;
        d.set_item("denied", s.denied)?;
        d.set_item("present_pages", s.present_pages)?;
        d.set_item("distinct_pfns", s.distinct_pfns)?;
        d.set_item("hashed_pfns", s.hashed_pfns)?;
        d.set_item("unreadable_pfns", s.unreadable_pfns)?;
        d.set_item("vanished_pfns", s.vanished_pfns)?;
        d.set_item("threads", s.threads)?;
        d.set_item("stage_ms", s.stage_ms.to_vec())?;
        d.set_item(
            "physical_source",
            self.phys
                .as_ref()
                .map(|p| (p.format.as_str(), p.path().display().to_string())),
        )?;
        d.set_item("physical_source_notes", self.phys_notes.clone())?;
        d.set_item("ram_ranges", self.ram.clone())?;
        let files = pyo3::types::PyList::empty(py);
        for (path, r) in &self.file_cache {
            let f = PyDict::new(py);
            f.set_item("path", path.display().to_string())?;
            match r {
                Ok((cached, pages)) => {
                    f.set_item("cached_pages", cached)?;
                    f.set_item("pages", pages)?;
                }
                Err(e) => f.set_item("error", e)?,
            }
            files.append(f)?;
        }
        d.set_item("cached_files", files)?;
        d.set_item("file_cache_frames", self.scan.file_cache.len())?;
        Ok(d)
    }

    fn processes(&self) -> PyResult<PyTable> {
        let ps = &self.scan.processes;
        let col = |f: &dyn Fn(&dedupx_core::host_scan::HostProcess) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(ps.iter().map(f)))
        };
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "pid",
                Arc::new(UInt32Array::from_iter_values(ps.iter().map(|p| p.info.pid))),
            ),
            (
                "ppid",
                Arc::new(UInt32Array::from_iter_values(
                    ps.iter().map(|p| p.info.ppid),
                )),
            ),
            ("comm", col(&|p| p.info.comm.clone())),
            ("cmdline", col(&|p| p.info.cmdline.join(" "))),
            (
                "argv0",
                col(&|p| p.info.cmdline.first().cloned().unwrap_or_default()),
            ),
            ("cgroup", col(&|p| p.cgroup.trim_end().to_string())),
            (
                "pid_ns",
                Arc::new(UInt64Array::from_iter_values(ps.iter().map(|p| p.pid_ns))),
            ),
            (
                "vmas",
                Arc::new(UInt64Array::from_iter_values(
                    ps.iter().map(|p| p.vmas.len() as u64),
                )),
            ),
        ];
        table(batch(columns))
    }

    fn vmas(&self) -> PyResult<PyTable> {
        let mut batches = Vec::new();
        for p in &self.scan.processes {
            batches
                .push(batch(vmas_columns(p.info.pid, &p.vmas)).map_err(crate::frames::arrow_err)?);
        }
        let schema = batch(vmas_columns(0, &[]))
            .map_err(crate::frames::arrow_err)?
            .schema();
        PyTable::try_new(batches, schema)
    }

    fn process_count(&self) -> usize {
        self.scan.processes.len()
    }

    /// Address windows of the i-th process of at most `max_pages` virtual pages each.
    fn page_windows(&self, index: usize, max_pages: u64) -> PyResult<Vec<(u64, u64)>> {
        Ok(HostScan::page_windows(
            self.process(index)?,
            max_pages.max(1),
        ))
    }

    /// The `pages` rows of the i-th process in [start, end) (pass 2), with a `pid` column.
    fn pages(&self, py: Python<'_>, index: usize, start: u64, end: u64) -> PyResult<PyTable> {
        let p = self.process(index)?;
        let pid = p.info.pid;
        let result = py.detach(|| self.scan.process_pages(&self.kpage, p, start, end));
        let pages = match result {
            Ok(t) => t,
            // Exited since pass 1: it simply has no pages now.
            Err(
                dedupx_core::ScanError::ProcessGone { .. }
                | dedupx_core::ScanError::NoSuchProcess { .. },
            ) => Default::default(),
            Err(e) => return Err(errors::to_py(e)),
        };
        let n = pages.len();
        let b = crate::frames::pages_batch_with(pages, &self.store)
            .map_err(crate::frames::arrow_err)?;
        let mut columns: Vec<(&str, ArrayRef)> =
            vec![("pid", Arc::new(UInt32Array::from(vec![pid; n])))];
        let schema = b.schema();
        for (f, a) in schema.fields().iter().zip(b.columns()) {
            columns.push((f.name().as_str(), a.clone()));
        }
        table(batch(columns))
    }

    /// System RAM as (first PFN, end PFN) ranges.
    fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.ram.clone()
    }

    /// `frames` rows for PFNs [start, end) of System RAM.
    fn frames(&self, py: Python<'_>, start: u64, end: u64) -> PyResult<PyTable> {
        let chunk = py
            .detach(|| {
                self.scan
                    .frames_chunk(&self.kpage, start, end, self.phys.as_ref())
            })
            .map_err(errors::to_py)?;
        let (hash, _) = self
            .store
            .column(&chunk.hash_slot, Some(chunk.local_hashes))
            .map_err(crate::frames::arrow_err)?;
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("pfn", u64s(chunk.pfn, None)),
            ("hash", hash),
            ("kpageflags", u64s(chunk.kpageflags, None)),
            ("mapcount", u64s(chunk.mapcount, None)),
            ("zero", bit_column(chunk.zero, None)),
            ("mapped", bit_column(chunk.mapped, None)),
        ];
        table(batch(columns))
    }
}
