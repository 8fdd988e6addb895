//! The thread pool a heavy call runs in: its own, sized by the caller, so that a scan
//! uses the threads it was asked for whatever else the process runs.

use std::io;

/// Runs `f` in a new rayon pool of `threads` threads (0: one per core).
pub fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(io::Error::other)?;
    Ok(pool.install(f))
}
