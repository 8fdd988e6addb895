use std::io;
use std::path::PathBuf;

use crate::parallel::ThreadPoolError;
use crate::phys_image::ImageError;
use crate::read_plan::PlanError;
use crate::stages::Interrupted;

/// Everything that can stop a scan, with the context a user needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("no process with PID {pid}")]
    NoSuchProcess { pid: u32 },

    #[error("process {pid} exited during the scan")]
    ProcessGone { pid: u32 },

    #[error("permission denied reading {path}: run dedupx as root")]
    PermissionDenied { path: PathBuf },

    #[error(
        "{path} shows no page frame numbers: dedupx needs CAP_SYS_ADMIN (run as root, outside a restricted container)"
    )]
    PfnHidden { path: PathBuf },

    #[error("{path} is missing: this kernel lacks CONFIG_PROC_PAGE_MONITOR, which dedupx needs")]
    NoKpageflags { path: PathBuf },

    #[error("cannot parse {path} line {line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("{path} shows no addresses: run dedupx as root")]
    IomemHidden { path: PathBuf },

    #[error("scan interrupted")]
    Interrupted,

    #[error("cannot copy pages of process {pid}: {source}")]
    Copy {
        pid: u32,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    ThreadPool(#[from] ThreadPoolError),

    #[error(transparent)]
    Plan(#[from] PlanError),

    /// The physical memory source named for a host snapshot could not be opened.
    #[error(transparent)]
    Image(#[from] ImageError),

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ScanError {
    /// Maps an I/O failure on a per-process file to the error that explains it: a process
    /// that vanished reads as ENOENT/ESRCH, a foreign one as EACCES/EPERM.
    pub(crate) fn from_proc_io(pid: u32, path: PathBuf, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => ScanError::ProcessGone { pid },
            Some(libc::EACCES) | Some(libc::EPERM) => ScanError::PermissionDenied { path },
            _ => ScanError::Io { path, source },
        }
    }

    /// The same for system-wide files such as /proc/kpageflags.
    pub(crate) fn from_kernel_io(path: PathBuf, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOENT) => ScanError::NoKpageflags { path },
            Some(libc::EACCES) | Some(libc::EPERM) => ScanError::PermissionDenied { path },
            _ => ScanError::Io { path, source },
        }
    }
}

impl From<Interrupted> for ScanError {
    fn from(_: Interrupted) -> Self {
        ScanError::Interrupted
    }
}

pub type Result<T> = std::result::Result<T, ScanError>;
