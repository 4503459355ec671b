//! Where the migration, or the daemon working on it, stands: one name for metrics, `status`
//! and cutover's checks.

use serde::Serialize;

/// The phase of the migration as a whole (per-table copy progress is `pg::state::Phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Nothing copied yet.
    NotStarted,
    /// Tables are being copied.
    Snapshot,
    /// Every table is copied; changes follow as the app makes them.
    Streaming,
    /// A migration rebuilt a table; it is being compared and fixed row by row.
    Resyncing,
    /// An error no retry fixes: the daemon waits for a person, and goes on once it is fixed.
    Waiting,
    /// The cutover is recorded: Postgres is the database.
    CutOver,
    /// The daemon stopped (a signal, or the end of a one-shot pass).
    Stopped,
    /// After the cutover: the app's writes on Postgres follow back into SQLite.
    ReverseStreaming,
    /// The fallback is recorded: SQLite is the database again.
    FellBack,
}

impl Phase {
    /// Every phase, in order (metrics export one series each).
    pub const ALL: [Phase; 9] = [
        Phase::NotStarted,
        Phase::Snapshot,
        Phase::Streaming,
        Phase::Resyncing,
        Phase::Waiting,
        Phase::CutOver,
        Phase::Stopped,
        Phase::ReverseStreaming,
        Phase::FellBack,
    ];

    /// The name in metrics labels and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::NotStarted => "not_started",
            Phase::Snapshot => "snapshot",
            Phase::Streaming => "streaming",
            Phase::Resyncing => "resyncing",
            Phase::Waiting => "waiting",
            Phase::CutOver => "cut_over",
            Phase::Stopped => "stopped",
            Phase::ReverseStreaming => "reverse_streaming",
            Phase::FellBack => "fell_back",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Phase;

    #[test]
    fn the_json_name_is_the_metric_label() {
        for p in Phase::ALL {
            assert_eq!(
                serde_json::to_value(p).ok(),
                Some(serde_json::Value::String(p.as_str().into()))
            );
        }
    }
}
