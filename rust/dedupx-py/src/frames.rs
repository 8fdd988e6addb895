//! Core tables → Arrow record batches, handed to Python through the Arrow PyCapsule stream.
//! Numeric columns move their Vec into an Arrow buffer without copying.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, FixedSizeBinaryArray, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, Field, Schema};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_arrow::PyTable;

use dedupx_core::maps::Vma;
use dedupx_core::process_scan::{PageTable, ProcessScan};

pub fn process_scan_to_dict(py: Python<'_>, scan: ProcessScan) -> PyResult<Bound<'_, PyDict>> {
    let pid = scan.info.pid;
    let out = PyDict::new(py);
    out.set_item("vmas", table(vmas_batch(pid, &scan.vmas))?)?;
    out.set_item("pages", table(pages_batch(pid, scan.pages))?)?;

    let info = PyDict::new(py);
    info.set_item("pid", pid)?;
    info.set_item("ppid", scan.info.ppid)?;
    info.set_item("comm", &scan.info.comm)?;
    info.set_item("cmdline", &scan.info.cmdline)?;
    out.set_item("info", info)?;

    let s = &scan.stats;
    let stats = PyDict::new(py);
    stats.set_item("present_pages", s.present_pages)?;
    stats.set_item("swapped_pages", s.swapped_pages)?;
    stats.set_item("distinct_pfns", s.distinct_pfns)?;
    stats.set_item("hashed_pfns", s.hashed_pfns)?;
    stats.set_item("unreadable_pfns", s.unreadable_pfns)?;
    stats.set_item("vanished_pfns", s.vanished_pfns)?;
    stats.set_item("threads", s.threads)?;
    let stage_ms = PyDict::new(py);
    for (name, ms) in ["pagemap", "kpageflags", "hash", "assemble"].iter().zip(s.stage_ms) {
        stage_ms.set_item(name, ms)?;
    }
    stats.set_item("stage_ms", stage_ms)?;
    out.set_item("stats", stats)?;
    Ok(out)
}

fn table(batch: Result<RecordBatch, ArrowError>) -> PyResult<PyTable> {
    let batch = batch.map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let schema = batch.schema();
    PyTable::try_new(vec![batch], schema)
}

fn u64s(values: Vec<u64>, valid: Option<&[bool]>) -> ArrayRef {
    Arc::new(UInt64Array::new(
        ScalarBuffer::from(values),
        valid.map(nulls),
    ))
}

fn u32s(values: Vec<u32>) -> ArrayRef {
    Arc::new(UInt32Array::new(ScalarBuffer::from(values), None))
}

fn bools(values: &[bool], valid: Option<&[bool]>) -> ArrayRef {
    Arc::new(BooleanArray::new(
        BooleanBuffer::from(values),
        valid.map(nulls),
    ))
}

fn nulls(valid: &[bool]) -> NullBuffer {
    NullBuffer::from(BooleanBuffer::from(valid))
}

fn pages_batch(pid: u32, t: PageTable) -> Result<RecordBatch, ArrowError> {
    let n = t.len();
    let hash_values = Buffer::from_vec(t.hash);
    let hash = FixedSizeBinaryArray::try_new(16, hash_values, Some(nulls(&t.hashed)))?;
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("pid", u32s(vec![pid; n])),
        ("vma_id", u32s(t.vma_id)),
        ("vaddr", u64s(t.vaddr, None)),
        ("pfn", u64s(t.pfn, Some(&t.present))),
        ("present", bools(&t.present, None)),
        ("swapped", bools(&t.swapped, None)),
        ("file_shared", bools(&t.file_shared, None)),
        ("exclusive", bools(&t.exclusive, None)),
        ("kpageflags", u64s(t.kpageflags, Some(&t.present))),
        ("mapcount", u64s(t.mapcount, Some(&t.present))),
        ("hash", Arc::new(hash)),
        ("zero", bools(&t.zero, Some(&t.hashed))),
    ];
    batch(columns)
}

fn vmas_batch(pid: u32, vmas: &[Vma]) -> Result<RecordBatch, ArrowError> {
    let n = vmas.len();
    let strs = |f: &dyn Fn(&Vma) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(vmas.iter().map(f)))
    };
    let nums = |f: &dyn Fn(&Vma) -> u64| u64s(vmas.iter().map(f).collect(), None);
    let mergeable: Vec<bool> = vmas.iter().map(Vma::mergeable).collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("pid", u32s(vec![pid; n])),
        ("vma_id", u32s((0..n as u32).collect())),
        ("start", nums(&|v| v.start)),
        ("end", nums(&|v| v.end)),
        ("perms", strs(&|v| v.perms.clone())),
        ("offset", nums(&|v| v.offset)),
        ("dev", strs(&|v| v.dev.clone())),
        ("inode", nums(&|v| v.inode)),
        ("path", strs(&|v| v.path.clone())),
        ("mergeable", bools(&mergeable, None)),
        ("kind", strs(&|v| v.kind.as_str().to_string())),
        ("vm_flags", strs(&|v| v.vm_flags.join(" "))),
        ("rss_bytes", nums(&|v| v.rss_kb * 1024)),
        ("pss_bytes", nums(&|v| v.pss_kb * 1024)),
        ("swap_bytes", nums(&|v| v.swap_kb * 1024)),
        ("anon_huge_bytes", nums(&|v| v.anon_huge_kb * 1024)),
    ];
    batch(columns)
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch, ArrowError> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, a)| {
            Field::new(
                *name,
                a.data_type().clone(),
                a.null_count() > 0 || nullable(name),
            )
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    RecordBatch::try_new(schema, columns.into_iter().map(|(_, a)| a).collect())
}

/// Columns that can hold nulls, declared so whether or not this scan has any.
fn nullable(name: &str) -> bool {
    matches!(name, "pfn" | "kpageflags" | "mapcount" | "hash" | "zero")
}
