//! Core errors become the Python `DedupxError` hierarchy, declared once in
//! `dedupx/exceptions.py` so that classes can also subclass ValueError or PermissionError.

use dedupx_core::agent_file::AgentFileError;
use dedupx_core::phys_image::ImageError;
use dedupx_core::ScanError;
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::PyErr;

pyo3::import_exception!(dedupx.exceptions, ProcessNotFound);
pyo3::import_exception!(dedupx.exceptions, ProcessGone);
pyo3::import_exception!(dedupx.exceptions, PermissionDenied);
pyo3::import_exception!(dedupx.exceptions, PfnHidden);
pyo3::import_exception!(dedupx.exceptions, KernelUnsupported);
pyo3::import_exception!(dedupx.exceptions, ProcParseError);
pyo3::import_exception!(dedupx.exceptions, DedupxIOError);
pyo3::import_exception!(dedupx.exceptions, FrameExportError);

pub fn to_py(err: ScanError) -> PyErr {
    let msg = err.to_string();
    match err {
        ScanError::NoSuchProcess { .. } => ProcessNotFound::new_err(msg),
        ScanError::ProcessGone { .. } => ProcessGone::new_err(msg),
        ScanError::PermissionDenied { .. } | ScanError::IomemHidden { .. } => {
            PermissionDenied::new_err(msg)
        }
        ScanError::PfnHidden { .. } => PfnHidden::new_err(msg),
        ScanError::NoKpageflags { .. } => KernelUnsupported::new_err(msg),
        ScanError::Parse { .. } => ProcParseError::new_err(msg),
        ScanError::Interrupted => PyKeyboardInterrupt::new_err(msg),
        ScanError::Io { .. } | ScanError::Copy { .. } | ScanError::ThreadPool(_) => {
            DedupxIOError::new_err(msg)
        }
        // A read plan that names a slot twice is a bug in dedupx, not something to act on.
        ScanError::Plan(_) => PyRuntimeError::new_err(msg),
        ScanError::Image(e) => image_to_py(e),
    }
}

pyo3::import_exception!(dedupx.exceptions, CorruptImage);

pub fn image_to_py(err: ImageError) -> PyErr {
    let msg = err.to_string();
    match err {
        ImageError::Open { .. }
        | ImageError::Io { .. }
        | ImageError::ThreadPool(_)
        | ImageError::TooLarge { .. } => DedupxIOError::new_err(msg),
        ImageError::Interrupted => PyKeyboardInterrupt::new_err(msg),
        ImageError::Plan(_) => PyRuntimeError::new_err(msg),
        ImageError::Truncated { .. }
        | ImageError::BadFormat { .. }
        | ImageError::Overlap { .. }
        | ImageError::Misaligned { .. }
        | ImageError::Empty { .. }
        | ImageError::Implausible { .. } => CorruptImage::new_err(msg),
    }
}

pyo3::import_exception!(dedupx.exceptions, CorruptAgentFile);

pub fn agent_to_py(err: AgentFileError) -> PyErr {
    let msg = err.to_string();
    match err {
        AgentFileError::Io { .. } => DedupxIOError::new_err(msg),
        AgentFileError::Corrupt { .. } => CorruptAgentFile::new_err(msg),
    }
}
