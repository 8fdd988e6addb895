//! Progress from the core, which runs with the GIL released, to a Python callback; and
//! Ctrl-C or an exception in that callback back to the core as a request to stop.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// How often the callback runs at most: often enough for a smooth bar and a prompt
/// Ctrl-C, rarely enough to cost nothing.
const INTERVAL: Duration = Duration::from_millis(100);

pub struct ProgressBridge {
    callback: Option<Py<PyAny>>,
    failure: Mutex<Option<PyErr>>,
    last: Mutex<Instant>,
}

impl ProgressBridge {
    pub fn new(callback: Option<Py<PyAny>>) -> Self {
        Self {
            callback,
            failure: Mutex::new(None),
            last: Mutex::new(Instant::now() - INTERVAL),
        }
    }

    /// Returns false when the work should stop.
    pub fn report(&self, stage: &str, done: u64, total: u64) -> bool {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if done != 0 && done != total && last.elapsed() < INTERVAL {
                return true;
            }
            *last = Instant::now();
        }
        Python::attach(|py| {
            let outcome = py.check_signals().and_then(|()| match &self.callback {
                Some(cb) => cb.call1(py, (stage, done, total)).map(drop),
                None => Ok(()),
            });
            outcome
                .map_err(|e| *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e))
                .is_ok()
        })
    }

    /// The callback's own exception (or KeyboardInterrupt) wins over the core's
    /// "interrupted"; otherwise the core's error is converted by `convert`.
    pub fn finish<T, E>(
        self,
        result: Result<T, E>,
        convert: impl FnOnce(E) -> PyErr,
    ) -> PyResult<T> {
        if let Some(e) = self.failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        result.map_err(convert)
    }
}
