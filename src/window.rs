//! The write-unavailable window of a switch (cutover or fallback): one reading of both clocks
//! when the fence goes up, so the record, the log, the result line and the metric all give the
//! one figure the monotonic clock measured.

use std::time::Instant;

/// Now, in seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A window opened when the fence went up.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// When it opened (Unix seconds), for the record.
    pub opened_at: f64,
    started: Instant,
}

impl Window {
    /// Opens a window now.
    pub fn open() -> Window {
        Window {
            opened_at: now_secs(),
            started: Instant::now(),
        }
    }

    /// The monotonic instant it opened, for timing the steps inside it.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Closes it now: when it closed on the wall clock, counted from `opened_at` by the
    /// monotonic clock (a wall-clock step inside the window cannot change its length).
    pub fn close(&self) -> f64 {
        self.opened_at + self.started.elapsed().as_secs_f64()
    }
}
