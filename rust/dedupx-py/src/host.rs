//! The whole-host snapshot as a Python object: pass 1 runs when it is made; pages and
//! frames are then handed out a piece at a time for Python to stream to Parquet.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, BooleanArray, StringArray, UInt32Array, UInt64Array};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_arrow::PyTable;

use dedupx_core::host_scan::{HostProcess, HostScan};
use dedupx_core::host_snapshot::HostOptions;
use dedupx_core::process_scan::ScanOptions;

use crate::errors;
use crate::frames::{
    arrow_err, batch, bit_column, pages_batch_with, stage_ms, table, tables, u64s, vmas_columns,
    HashStore,
};
use crate::progress::ProgressBridge;

#[pyclass(module = "dedupx._dedupx", frozen)]
pub struct HostSnapshot {
    snap: dedupx_core::host_snapshot::HostSnapshot,
    store: HashStore,
}

impl HostSnapshot {
    fn process(&self, index: usize) -> PyResult<&HostProcess> {
        self.snap
            .scan
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
    #[pyo3(signature = (*, proc_root=None, dev_root=None, threads=0, hash=true, phys=None, iomem=None, cached_files=Vec::new(), page_cache=false, progress=None))]
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
        page_cache: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let opts = HostOptions {
            scan: ScanOptions {
                proc_root: proc_root.unwrap_or_else(|| PathBuf::from("/proc")),
                threads,
                hash,
                ..ScanOptions::default()
            },
            dev_root: dev_root.unwrap_or_else(|| PathBuf::from("/dev")),
            phys,
            iomem,
            cached_files,
            page_cache,
        };
        let bridge = ProgressBridge::new(progress);
        let result = py.detach(|| {
            dedupx_core::host_snapshot::HostSnapshot::capture(&opts, &|s, d, t| {
                bridge.report(s, d, t)
            })
        });
        let mut snap = bridge.finish(result, errors::to_py)?;
        let hashes = std::mem::take(&mut snap.scan.contents.hashes).into_flattened();
        Ok(Self {
            snap,
            store: HashStore::new(hashes),
        })
    }

    /// Counters of pass 1 and the physical memory source (or why there is none).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.snap.scan.stats;
        let d = PyDict::new(py);
        d.set_item("processes", s.processes)?;
        d.set_item("exited", s.exited)?;
        d.set_item("denied", s.denied)?;
        d.set_item("present_pages", s.present_pages)?;
        d.set_item("distinct_pfns", s.distinct_pfns)?;
        d.set_item("hashed_pfns", s.hashed_pfns)?;
        d.set_item("unreadable_pfns", s.unreadable_pfns)?;
        d.set_item("vanished_pfns", s.vanished_pfns)?;
        d.set_item("changed_processes", s.changed_processes)?;
        d.set_item("observer_pfns", s.observer_pfns)?;
        d.set_item("threads", s.threads)?;
        d.set_item("stage_ms", stage_ms(py, &s.stage_ms)?)?;
        d.set_item(
            "physical_source",
            self.snap
                .phys
                .as_ref()
                .map(|p| (p.format.as_str(), p.path().display().to_string())),
        )?;
        d.set_item("physical_source_notes", self.snap.phys_notes.clone())?;
        d.set_item("ram_ranges", self.snap.ram.clone())?;
        let files = pyo3::types::PyList::empty(py);
        for (path, r) in &self.snap.cached_files {
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
        if let Some(r) = &self.snap.page_cache {
            let w = PyDict::new(py);
            let mounts: Vec<String> = r.mounts.iter().map(|m| m.display().to_string()).collect();
            w.set_item("mounts", mounts)?;
            w.set_item("files", r.files)?;
            w.set_item("files_cached", r.files_cached)?;
            w.set_item("pages_cached", r.pages_cached)?;
            w.set_item("pages_hashed", r.pages_hashed)?;
            w.set_item("pages_vanished", r.pages_vanished)?;
            w.set_item("unreadable", r.unreadable)?;
            w.set_item("links_skipped", r.links_skipped)?;
            w.set_item("seconds", r.seconds)?;
            d.set_item("page_cache", w)?;
        }
        d.set_item("file_cache_frames", self.snap.scan.file_cache.len())?;
        Ok(d)
    }

    fn processes(&self) -> PyResult<PyTable> {
        let ps = &self.snap.scan.processes;
        let mut cmdline = ListBuilder::new(StringBuilder::new());
        for p in ps {
            cmdline.append_value(p.info.cmdline.iter().map(Some));
        }
        let col = |f: &dyn Fn(&HostProcess) -> String| -> ArrayRef {
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
            ("cmdline", Arc::new(cmdline.finish())),
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
            // What changed while it was read (dedupx_core::read_changes).
            (
                "changed_pages",
                Arc::new(UInt64Array::from_iter_values(
                    ps.iter().map(|p| p.changes.pages),
                )),
            ),
            (
                "vmas_appeared",
                Arc::new(UInt64Array::from_iter_values(
                    ps.iter().map(|p| p.changes.vmas_appeared),
                )),
            ),
            (
                "vmas_vanished",
                Arc::new(UInt64Array::from_iter_values(
                    ps.iter().map(|p| p.changes.vmas_vanished),
                )),
            ),
            (
                "exited_during_scan",
                Arc::new(BooleanArray::from_iter(
                    ps.iter().map(|p| Some(p.changes.exited)),
                )),
            ),
        ];
        table(batch(columns))
    }

    fn vmas(&self) -> PyResult<PyTable> {
        let mut batches = Vec::new();
        for p in &self.snap.scan.processes {
            batches.push(batch(vmas_columns(p.info.pid, &p.vmas)).map_err(arrow_err)?);
        }
        let schema = batch(vmas_columns(0, &[])).map_err(arrow_err)?.schema();
        tables(batches, schema)
    }

    fn process_count(&self) -> usize {
        self.snap.scan.processes.len()
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
        let pages = py
            .detach(|| self.snap.scan.process_pages(p, start, end))
            .map_err(errors::to_py)?;
        let n = pages.len();
        let b = pages_batch_with(pages, &self.store).map_err(arrow_err)?;
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
        self.snap.ram.clone()
    }

    /// `frames` rows for PFNs [start, end) of System RAM, and all its PFNs (with a row or
    /// without) counted by coverage class (`host_frames::ChunkCoverage`).
    fn frames<'py>(
        &self,
        py: Python<'py>,
        start: u64,
        end: u64,
    ) -> PyResult<(PyTable, Bound<'py, PyDict>)> {
        let chunk = py
            .detach(|| self.snap.frames(start, end))
            .map_err(errors::to_py)?;
        let (hash, _) = self
            .store
            .column(&chunk.hash_slot, Some(chunk.local_hashes))
            .map_err(arrow_err)?;
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("pfn", u64s(chunk.pfn, None)),
            ("hash", hash),
            ("kpageflags", u64s(chunk.kpageflags, None)),
            ("mapcount", u64s(chunk.mapcount, None)),
            ("zero", bit_column(chunk.zero, None)),
            ("mapped", bit_column(chunk.mapped, None)),
        ];
        let u = chunk.coverage;
        let coverage = PyDict::new(py);
        for (name, n) in [
            ("pages", u.pages),
            ("hashed", u.hashed),
            ("hashed_mapped", u.hashed_mapped),
            ("no_page", u.no_page),
            ("free", u.free),
            ("unmapped_page_cache", u.unmapped_page_cache),
            ("unmapped_anon_shmem", u.unmapped_anon_shmem),
            ("mapped_unread", u.mapped_unread),
        ] {
            coverage.set_item(name, n)?;
        }
        Ok((table(batch(columns))?, coverage))
    }
}
