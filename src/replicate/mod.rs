//! Replication: the snapshot, then the follower driving a stream either way (the forward
//! stream from SQLite's changelog into Postgres, the reverse stream back after the cutover),
//! and the daemon (`run`) that orders them; `uninstall` takes it all away.

pub mod fleet;
pub mod follower;
pub mod progress;
pub mod reverse_stream;
pub mod run;
pub mod snapshot;
pub mod stream;
pub mod uninstall;

/// Where the two databases are: what every stage that works on both is told.
#[derive(Debug, Clone)]
pub struct Databases {
    /// The SQLite file.
    pub source: std::path::PathBuf,
    /// The Postgres database.
    pub target: crate::conninfo::TargetUrl,
    /// The Postgres schema the tables are in.
    pub schema: String,
    /// How long a SQLite statement waits for the app's lock.
    pub busy_timeout: std::time::Duration,
    /// The tenant sqlite2pg's state is kept under ('' for a single file).
    pub tenant: String,
    /// Which rows of the target's tables are this tenant's.
    pub rows: crate::pg::Rows,
    /// The cutover has no way back ([`Databases::two_way`]).
    pub one_way: bool,
}

impl Databases {
    /// The databases a configuration names; an error when it names no target.
    pub fn of(cfg: &crate::config::Config) -> crate::error::Result<Databases> {
        Ok(Databases {
            source: cfg.source.clone(),
            target: cfg.require_target()?.clone(),
            schema: cfg.target_schema.clone(),
            busy_timeout: std::time::Duration::from_millis(cfg.busy_timeout_ms),
            tenant: cfg.tenant_id().to_string(),
            rows: crate::pg::Rows::of(cfg.tenant_column.as_deref(), cfg.tenant_id()),
            one_way: cfg.one_way || cfg.tenant_column.is_some(),
        })
    }

    /// Whether a cutover has a way back: a capture of the app's writes on Postgres, the
    /// reverse stream and `fallback`. Not in a fleet that says `one_way` (under Citus a
    /// trigger on a distributed table is refused), nor in shared tables, where a capture
    /// would take every tenant's writes.
    pub fn two_way(&self) -> bool {
        !self.one_way
    }

    /// Whether the tables hold other tenants' rows too (a fleet's shared layout): their
    /// triggers, views, foreign keys and sequences are every tenant's.
    pub fn shared(&self) -> bool {
        self.rows != crate::pg::Rows::All
    }
}

/// What a tenant's daemon gets from the fleet daemon that runs it beside the other tenants'
/// (`None` in the options: a daemon of its own). The fleet watches every tenant's directory
/// with one watcher and listens on one connection, and routes each wake-up to its tenant; and
/// a tenant holds a Postgres connection only while it has work, so that a bounded pool
/// serves the whole fleet ([`crate::pg::Limit`]).
#[derive(Debug, Clone, Default)]
pub struct FleetLink {
    /// Its SQLite file (or its -wal/-journal) changed.
    pub file_changed: std::sync::Arc<tokio::sync::Notify>,
    /// A change of its was committed on Postgres (the reverse capture's notification), or
    /// its fallback was recorded.
    pub pg_changed: std::sync::Arc<tokio::sync::Notify>,
    /// The fleet's turns at pruning a changelog on time alone (one for every tenant).
    pub prunes: std::sync::Arc<PruneTurns>,
    /// The plans the fleet's tenants share (one for each distinct one).
    pub plans: std::sync::Arc<crate::plan::SharedPlans>,
}

/// Spaces out the changelog prunes that a fleet's tenants make only because time has passed.
/// Each is a SQLite write transaction (a connection opened, a sync) and a Postgres read,
/// made while the tenant holds a pooled session: a thousand writing tenants each due every
/// 30 s pruned 33 times a second, and the fleet's lag p50 went from 5 ms to 1 s.
#[derive(Debug, Default)]
pub struct PruneTurns {
    /// When the next turn is free (`None`: now).
    next: std::sync::Mutex<Option<std::time::Instant>>,
}

impl PruneTurns {
    /// At most one prune on time alone in this long, across the fleet: 1,000 writing tenants
    /// each get one every 200 s, when their changelogs hold a few hundred rows.
    pub const GAP: std::time::Duration = std::time::Duration::from_millis(200);

    /// Whether a prune due on time alone may run at `now` (and if so, the turn is taken).
    pub fn take(&self, now: std::time::Instant) -> bool {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if next.is_some_and(|n| now < n) {
            return false;
        }
        *next = Some(now + Self::GAP);
        true
    }
}

/// How long a stream, either way, runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The daemon's: until a stop, a schema change, or the switch it follows.
    Stopped,
    /// A switch's own drain: until every change recorded so far is applied. With
    /// `give_up_after`, it gives up when the other database stays unreachable that long
    /// (writes are fenced meanwhile); without, it waits as long as it takes.
    CaughtUp {
        /// How long an unreachable database is waited for.
        give_up_after: Option<std::time::Duration>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_fleet_prunes_on_time_once_a_gap_whoever_asks() {
        let turns = PruneTurns::default();
        let now = Instant::now();
        assert!(turns.take(now));
        assert!(!turns.take(now), "a second tenant at once");
        assert!(!turns.take(now + PruneTurns::GAP - Duration::from_millis(1)));
        assert!(turns.take(now + PruneTurns::GAP));
        assert!(!turns.take(now + PruneTurns::GAP));
    }
}
