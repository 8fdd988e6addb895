//! What every scan does between its stages: report progress (which may ask it to stop) and
//! time each stage by name.

use std::time::Instant;

/// Called with (stage, done, total); returning false stops the scan with `Interrupted`.
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) -> bool + Sync);

/// The caller asked the work to stop (its progress callback returned false).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Reports progress and turns a request to stop into an error.
pub fn check(progress: Progress, stage: &str, done: u64, total: u64) -> Result<(), Interrupted> {
    if progress(stage, done, total) {
        Ok(())
    } else {
        Err(Interrupted)
    }
}

/// Wall-clock milliseconds per named stage, in the order the stages ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageTimes(pub Vec<(&'static str, u64)>);

/// Times consecutive stages: each `lap` closes the stage that ran since the last one.
pub struct StageClock {
    since: Instant,
    times: StageTimes,
}

impl StageClock {
    pub fn start() -> Self {
        Self {
            since: Instant::now(),
            times: StageTimes::default(),
        }
    }

    pub fn lap(&mut self, stage: &'static str) {
        let now = Instant::now();
        let ms = (now - self.since).as_millis() as u64;
        self.times.0.push((stage, ms));
        self.since = now;
    }

    pub fn finish(self) -> StageTimes {
        self.times
    }
}
