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
