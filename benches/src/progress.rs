//! One line per finished step, with an ETA: runs take minutes and should not look stuck.

use std::time::{Duration, Instant};

pub struct Progress {
    suite: &'static str,
    total: usize,
    done: usize,
    started: Instant,
}

impl Progress {
    pub fn new(suite: &'static str, total: usize) -> Self {
        eprintln!("{suite}: {total} steps");
        Progress {
            suite,
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// Announces a step that has no result line of its own (setup such as loading data).
    pub fn note(&self, what: &str) {
        eprintln!("{}: {what}", self.suite);
    }

    /// Handles a step that failed. Ctrl-C stops the run (the error is returned); any other failure
    /// is reported and its line added to `failed_steps`, for the report, and the run goes on: one
    /// failed measurement must not throw away the others.
    pub fn step_failed(
        &mut self,
        step: &str,
        error: &anyhow::Error,
        failed_steps: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        crate::process::check_interrupted()?;
        let failed = format!("{} {step}: {error:#}", self.suite);
        self.step_done(step, "FAILED, left out of the medians (listed in the report)");
        eprintln!("{failed}");
        failed_steps.push(failed);
        Ok(())
    }

    /// Reports a finished step; the ETA assumes the remaining steps take as long on average.
    pub fn step_done(&mut self, step: &str, outcome: &str) {
        self.done += 1;
        let elapsed = self.started.elapsed();
        let remaining = elapsed.mul_f64((self.total - self.done.min(self.total)) as f64 / self.done as f64);
        let width = self.total.to_string().len();
        eprintln!(
            "[{:>width$}/{}] {} {step}: {outcome} (elapsed {}, ETA {})",
            self.done,
            self.total,
            self.suite,
            format_duration(elapsed),
            format_duration(remaining),
        );
    }
}

pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_minutes_and_seconds() {
        assert_eq!(format_duration(Duration::from_secs(7)), "7s");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m05s");
    }
}
