//! The clock, in one place. Wall-clock time (Unix milliseconds) is what messages carry and
//! stores keep; monotonic time is what timeouts, backoffs and grace periods are measured in, so a
//! clock that jumps (NTP, a suspended laptop) cannot stretch or skip them. The node's service
//! never reads either clock itself: it is handed a [`Now`], and tests hand it a fake one.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One reading of both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// For durations.
    pub mono: Instant,
    /// For timestamps (Unix ms).
    pub unix_ms: u64,
}

impl Now {
    /// The system's clocks, now.
    pub fn system() -> Self {
        Self { mono: Instant::now(), unix_ms: unix_now_ms() }
    }

    /// This reading moved on by `d` (a fake clock in tests).
    pub fn after(self, d: Duration) -> Self {
        Self { mono: self.mono + d, unix_ms: self.unix_ms + d.as_millis() as u64 }
    }
}
