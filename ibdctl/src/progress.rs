//! What the operator sees while things happen: one line per step, and for the slow ones a line
//! every few seconds saying what is still being waited for. The CLI prints to stderr; the control
//! plane logs through tracing.

use std::fmt::Display;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// `ibdctl: <message>` on stderr (the CLI).
    Stderr,
    /// tracing events (the control plane, whose output goes to its log).
    Log,
}

impl Reporter {
    pub fn say(&self, message: impl Display) {
        match self {
            Reporter::Stderr => eprintln!("ibdctl: {message}"),
            Reporter::Log => tracing::info!("{message}"),
        }
    }

    pub fn warn(&self, message: impl Display) {
        match self {
            Reporter::Stderr => eprintln!("ibdctl: warning: {message}"),
            Reporter::Log => tracing::warn!("{message}"),
        }
    }

    /// A ticker for a wait that may be long.
    pub fn ticker(&self, every: Duration) -> Ticker {
        Ticker {
            reporter: *self,
            started: Instant::now(),
            next: every,
            every,
        }
    }
}

pub struct Ticker {
    reporter: Reporter,
    started: Instant,
    next: Duration,
    every: Duration,
}

impl Ticker {
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Says `message(elapsed seconds)` if another period has passed since the last line.
    pub fn tick(&mut self, message: impl FnOnce(u64) -> String) {
        let elapsed = self.started.elapsed();
        if elapsed >= self.next {
            self.reporter.say(format!("  ... {}", message(elapsed.as_secs())));
            self.next = elapsed + self.every;
        }
    }
}
