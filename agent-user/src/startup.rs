//! Where a daemon's start-up goes, phase by phase: logged once when the daemon is ready
//! and shown by `status`, so a slow start (a debug build parsing BTF, the verifier under
//! emulation) is measured where it happens instead of guessed at.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One phase of the start-up and how long it took.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartupPhase {
    pub phase: String,
    /// Microseconds.
    pub us: u64,
}

/// Marks the end of each phase against the end of the one before.
pub struct Startup {
    begun: Instant,
    last: Instant,
    phases: Vec<StartupPhase>,
}

impl Startup {
    pub fn begin() -> Self {
        let now = Instant::now();
        Self {
            begun: now,
            last: now,
            phases: Vec::new(),
        }
    }

    /// Ends the phase `name` now.
    pub fn mark(&mut self, name: &str) {
        let now = Instant::now();
        self.phases.push(StartupPhase {
            phase: name.to_owned(),
            us: us(now - self.last),
        });
        self.last = now;
    }

    /// The phases so far, then `total`.
    pub fn finish(mut self) -> Vec<StartupPhase> {
        let total = us(self.begun.elapsed());
        self.phases.push(StartupPhase {
            phase: "total".to_owned(),
            us: total,
        });
        self.phases
    }
}

pub fn us(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `probe 1.2 ms, offsets 80.0 ms, …` for the log line.
pub fn summary(phases: &[StartupPhase]) -> String {
    phases
        .iter()
        .map(|p| format!("{} {:.1} ms", p.phase, p.us as f64 / 1e3))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_to_the_total() {
        let mut s = Startup::begin();
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.mark("one");
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.mark("two");
        let p = s.finish();
        let names: Vec<_> = p.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(names, ["one", "two", "total"]);
        assert!(p[0].us >= 5_000 && p[1].us >= 5_000, "{p:?}");
        let sum = p[0].us + p[1].us;
        assert!(p[2].us >= sum, "total {} < sum {sum}", p[2].us);
        assert!(summary(&p).starts_with("one "), "{}", summary(&p));
    }
}
