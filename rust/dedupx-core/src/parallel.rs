//! The thread pool a heavy call runs in: its own, sized by the caller, so that a scan
//! uses the threads it was asked for whatever else the process runs.

/// The worker threads could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start a pool of {threads} worker threads: {source}")]
pub struct ThreadPoolError {
    /// As asked for (0: one per core).
    pub threads: usize,
    #[source]
    pub source: rayon::ThreadPoolBuildError,
}

/// Runs `f` in a new rayon pool of `threads` threads (0: one per core).
pub fn in_pool<T: Send>(
    threads: usize,
    f: impl FnOnce() -> T + Send,
) -> Result<T, ThreadPoolError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|source| ThreadPoolError { threads, source })?;
    Ok(pool.install(f))
}

/// Gives back to the kernel what the worker threads have freed. glibc gives threads arenas
/// of their own (up to 8 per core), and a thread's small buffers (a pagemap piece's pages)
/// once freed stay in its arena unless it is trimmed: after a process scan's pagemap stage
/// that held 4 MB more of a 1 GiB scan's 20 MB peak in one run out of two. (Polars
/// allocates with its own allocator, so the walk covers only what Python and the core
/// allocated.)
pub fn return_freed_memory() {
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
