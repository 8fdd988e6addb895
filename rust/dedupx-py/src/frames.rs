//! Core tables → Arrow record batches, handed to Python through the Arrow PyCapsule stream.
//! Numeric columns move their Vec into an Arrow buffer without copying.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BinaryViewArray, BooleanArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, ScalarBuffer};
use arrow_data::ByteView;
use arrow_schema::{ArrowError, Field, Schema};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_arrow::PyTable;

use dedupx_core::agent_file::AgentData;
use dedupx_core::bitmap::BitVec;
use dedupx_core::host_frames::LOCAL;
use dedupx_core::image_frames::FrameTable;
use dedupx_core::maps::Vma;
use dedupx_core::page_table::{PageTable, NO_HASH};
use dedupx_core::phys_image::PhysImage;
use dedupx_core::process_scan::ProcessScan;
use dedupx_core::stages::StageTimes;

use crate::errors::FrameExportError;

pub fn process_scan_to_dict(py: Python<'_>, scan: ProcessScan) -> PyResult<Bound<'_, PyDict>> {
    let pid = scan.info.pid;
    let out = PyDict::new(py);
    out.set_item("vmas", table(vmas_batch(pid, &scan.vmas))?)?;
    out.set_item("pages", table(pages_batch(scan.pages))?)?;

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
    stats.set_item("swap_slots", s.swap_slots)?;
    stats.set_item("swap_hashed", s.swap_hashed)?;
    stats.set_item("swap_unread_reason", s.swap_unread_reason.clone())?;
    stats.set_item("observer_pfns", s.observer_pfns)?;
    stats.set_item("changed_pages", s.changes.pages)?;
    stats.set_item("vmas_appeared", s.changes.vmas_appeared)?;
    stats.set_item("vmas_vanished", s.changes.vmas_vanished)?;
    stats.set_item("exited_during_scan", s.changes.exited)?;
    stats.set_item("threads", s.threads)?;
    stats.set_item("stage_ms", stage_ms(py, &s.stage_ms)?)?;
    out.set_item("stats", stats)?;
    Ok(out)
}

/// Stage timings as a dict name → milliseconds, in the order the stages ran.
pub fn stage_ms<'py>(py: Python<'py>, times: &StageTimes) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, ms) in &times.0 {
        d.set_item(name, ms)?;
    }
    Ok(d)
}

pub fn table(batch: Result<RecordBatch, ArrowError>) -> PyResult<PyTable> {
    let batch = batch.map_err(arrow_err)?;
    let schema = batch.schema();
    tables(vec![batch], schema)
}

/// Batches of one schema as a table; a mismatch is an export failure like any other.
pub fn tables(batches: Vec<RecordBatch>, schema: arrow_schema::SchemaRef) -> PyResult<PyTable> {
    PyTable::try_new(batches, schema).map_err(|e| FrameExportError::new_err(e.to_string()))
}

pub fn u64s(values: Vec<u64>, valid: Option<NullBuffer>) -> ArrayRef {
    Arc::new(UInt64Array::new(ScalarBuffer::from(values), valid))
}

fn u32s(values: Vec<u32>) -> ArrayRef {
    Arc::new(UInt32Array::new(ScalarBuffer::from(values), None))
}

fn bools(values: &[bool]) -> ArrayRef {
    Arc::new(BooleanArray::new(BooleanBuffer::from(values), None))
}

/// Core bitmaps already have Arrow's bit order: the words become the buffer as they are.
fn bits(b: BitVec) -> BooleanBuffer {
    let (words, len) = b.into_words();
    BooleanBuffer::new(Buffer::from_vec(words), 0, len)
}

pub fn bit_column(b: BitVec, valid: Option<NullBuffer>) -> ArrayRef {
    Arc::new(BooleanArray::new(bits(b), valid))
}

/// Most slots per Arrow data buffer: view offsets are u32 and each hash takes 16 bytes.
const SLOTS_PER_BUFFER: usize = 1 << 27;

/// Per-PFN hashes (16 bytes per slot) as Arrow buffers that hash columns point into, so a
/// hash is stored once however many rows name its PFN, and polars takes it without a copy.
#[derive(Clone)]
pub struct HashStore {
    buffers: Vec<Buffer>,
}

impl HashStore {
    pub fn new(hashes: Vec<u8>) -> Self {
        let all = Buffer::from_vec(hashes);
        let chunk = SLOTS_PER_BUFFER * 16;
        let buffers = (0..all.len().div_ceil(chunk))
            .map(|i| all.slice_with_length(i * chunk, chunk.min(all.len() - i * chunk)))
            .collect();
        Self { buffers }
    }

    /// A BinaryView column: row i holds slot `slots[i]`'s hash, or null for NO_HASH. With
    /// `local`, slots marked LOCAL index those hashes instead.
    pub fn column(
        &self,
        slots: &[u32],
        local: Option<Vec<u8>>,
    ) -> Result<(ArrayRef, NullBuffer), ArrowError> {
        let valid = NullBuffer::new(slots.iter().map(|&s| s != NO_HASH).collect());
        let local_index = self.buffers.len() as u32;
        let local_bytes = local.as_deref().unwrap_or(&[]);
        let view = |data: &[u8], buffer_index: u32, offset: usize| {
            ByteView {
                length: 16,
                prefix: u32::from_le_bytes([
                    data[offset],
                    data[offset + 1],
                    data[offset + 2],
                    data[offset + 3],
                ]),
                buffer_index,
                offset: offset as u32,
            }
            .as_u128()
        };
        let views: Vec<u128> = slots
            .iter()
            .map(|&s| {
                if s == NO_HASH {
                    0
                } else if local.is_some() && s & LOCAL != 0 {
                    view(local_bytes, local_index, (s & !LOCAL) as usize * 16)
                } else {
                    let (b, at) = (
                        s as usize / SLOTS_PER_BUFFER,
                        s as usize % SLOTS_PER_BUFFER * 16,
                    );
                    view(self.buffers[b].as_slice(), b as u32, at)
                }
            })
            .collect();
        let mut buffers = self.buffers.clone();
        if let Some(l) = local {
            buffers.push(Buffer::from_vec(l));
        }
        let array =
            BinaryViewArray::try_new(ScalarBuffer::from(views), buffers, Some(valid.clone()))?;
        Ok((Arc::new(array), valid))
    }
}

/// The constant `pid` column is added on the Python side, where polars keeps it as a
/// scalar instead of 4 bytes per row.
fn pages_batch(mut t: PageTable) -> Result<RecordBatch, ArrowError> {
    let store = HashStore::new(std::mem::take(&mut t.hashes));
    pages_batch_with(t, &store)
}

/// The pages batch with hashes taken from `store` (shared by all of a host's processes).
pub fn pages_batch_with(t: PageTable, store: &HashStore) -> Result<RecordBatch, ArrowError> {
    // pfn, kpageflags and mapcount are null where the page has no frame (not present, not
    // swapped to a slot the scan resolved).
    let present = NullBuffer::new(bits(t.frame.clone()));
    let (hash, hashed) = store.column(&t.hash_slot, None)?;
    drop(t.hash_slot);
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("vma_id", u32s(t.vma_id)),
        ("vaddr", u64s(t.vaddr, None)),
        ("pfn", u64s(t.pfn, Some(present.clone()))),
        ("present", bit_column(t.present, None)),
        ("swapped", bit_column(t.swapped, None)),
        ("file_shared", bit_column(t.file_shared, None)),
        ("exclusive", bit_column(t.exclusive, None)),
        ("kpageflags", u64s(t.kpageflags, Some(present.clone()))),
        ("mapcount", u64s(t.mapcount, Some(present))),
        ("hash", hash),
        ("zero", bit_column(t.zero, Some(hashed))),
    ];
    batch(columns)
}

fn vmas_batch(pid: u32, vmas: &[Vma]) -> Result<RecordBatch, ArrowError> {
    batch(vmas_columns(pid, vmas))
}

pub fn vmas_columns(pid: u32, vmas: &[Vma]) -> Vec<(&'static str, ArrayRef)> {
    let n = vmas.len();
    let strs = |f: &dyn Fn(&Vma) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(vmas.iter().map(f)))
    };
    let nums = |f: &dyn Fn(&Vma) -> u64| u64s(vmas.iter().map(f).collect(), None);
    let mergeable: Vec<bool> = vmas.iter().map(Vma::mergeable).collect();
    vec![
        ("pid", u32s(vec![pid; n])),
        ("vma_id", u32s((0..n as u32).collect())),
        ("start", nums(&|v| v.start)),
        ("end", nums(&|v| v.end)),
        ("perms", strs(&|v| v.perms.clone())),
        ("offset", nums(&|v| v.offset)),
        ("dev", strs(&|v| v.dev.clone())),
        ("inode", nums(&|v| v.inode)),
        ("path", strs(&|v| v.path.clone())),
        ("mergeable", bools(&mergeable)),
        ("kind", strs(&|v| v.kind.as_str().to_string())),
        ("vm_flags", strs(&|v| v.vm_flags.join(" "))),
        ("rss_bytes", nums(&|v| v.rss_kb * 1024)),
        ("pss_bytes", nums(&|v| v.pss_kb * 1024)),
        ("swap_bytes", nums(&|v| v.swap_kb * 1024)),
        ("anon_huge_bytes", nums(&|v| v.anon_huge_kb * 1024)),
        ("kernel_page_size", nums(&|v| v.kernel_page_kb * 1024)),
        (
            "shared_hugetlb_bytes",
            nums(&|v| v.shared_hugetlb_kb * 1024),
        ),
        (
            "private_hugetlb_bytes",
            nums(&|v| v.private_hugetlb_kb * 1024),
        ),
    ]
}

pub fn batch(columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch, ArrowError> {
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

pub fn image_to_dict<'py>(
    py: Python<'py>,
    image: &PhysImage,
    t: FrameTable,
) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    let slots: Vec<u32> = (0..t.len() as u32).collect();
    let (hash, _) = HashStore::new(t.hashes)
        .column(&slots, None)
        .map_err(arrow_err)?;
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("pfn", u64s(t.pfn, None)),
        ("hash", hash),
        ("zero", bit_column(t.zero, None)),
    ];
    out.set_item("frames", table(batch(columns))?)?;
    out.set_item("format", image.format.as_str())?;
    out.set_item("pages", image.pages())?;
    let segments: Vec<(u64, u64)> = image.segments.iter().map(|s| (s.paddr, s.len)).collect();
    out.set_item("segments", segments)?;
    Ok(out)
}

pub fn arrow_err(e: ArrowError) -> PyErr {
    FrameExportError::new_err(e.to_string())
}

/// A dedupx-agent file as `meta_json` and a `frames` table keyed by guest page frame
/// number (gfn, kpageflags, mapcount, hash where the guest could read the page).
pub fn agent_to_dict(py: Python<'_>, d: AgentData) -> PyResult<Bound<'_, PyDict>> {
    let n = d.kpageflags.len();
    let slots: Vec<u32> = (0..n)
        .map(|i| {
            if !d.hashes.is_empty() && d.hashed.get(i) {
                i as u32
            } else {
                NO_HASH
            }
        })
        .collect();
    let (hash, _) = HashStore::new(d.hashes)
        .column(&slots, None)
        .map_err(arrow_err)?;
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("gfn", u64s((0..n as u64).collect(), None)),
        ("kpageflags", u64s(d.kpageflags, None)),
        ("mapcount", u64s(d.kpagecount, None)),
        ("hash", hash),
    ];
    let out = PyDict::new(py);
    out.set_item("meta_json", d.meta_json)?;
    out.set_item("frames", table(batch(columns))?)?;
    Ok(out)
}
