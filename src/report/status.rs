//! `status`: where the migration stands, read from Postgres and the changelog, so it works
//! whether or not the daemon runs.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, ErrorKind, Result};
use crate::pg::foreign_keys;
use crate::pg::reverse;
use crate::pg::state::{self, STATE_SCHEMA};
use crate::phase::Phase;
use crate::replicate::Databases;
use crate::replicate::stream::julian_to_unix;
use crate::sqlite::{self, capture, changes, restore};

/// One table's snapshot progress.
#[derive(Debug, Serialize)]
pub struct TableStatus {
    /// Source table.
    pub table: String,
    /// copying, copied, indexed or ready.
    pub phase: state::Phase,
    /// Rows copied.
    pub rows_copied: i64,
    /// Rows in SQLite when the table's copy started.
    pub rows_total: Option<i64>,
}

/// The whole picture.
#[derive(Debug, Serialize)]
pub struct Status {
    /// not_started, snapshot, streaming or cut_over.
    pub phase: Phase,
    /// Whether a daemon holds the run lock right now.
    pub daemon_running: bool,
    /// Whether capture triggers are installed in SQLite.
    pub capture_installed: bool,
    /// Per-table snapshot progress.
    pub tables: Vec<TableStatus>,
    /// Highest changelog sequence number applied to Postgres.
    pub position: Option<i64>,
    /// Newest sequence number in the changelog.
    pub changelog_newest: Option<i64>,
    /// Changelog rows not yet applied (lag in changes).
    pub lag_changes: Option<i64>,
    /// Age of the oldest change not yet applied, in seconds (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// Changelog rows applied since the stream started.
    pub changes_applied: Option<i64>,
    /// The error the daemon last stopped on.
    pub last_error: Option<String>,
    /// The cutover record, once cut over.
    pub cutover: Option<state::Cutover>,
    /// Foreign keys kept aside while streaming (SQLite's are not enforced, so Postgres' are not).
    pub foreign_keys_kept: usize,
    /// Rows whose foreign key finds no parent, per foreign key (cutover refuses them unless
    /// told `--orphans keep`).
    pub orphans: Vec<foreign_keys::Orphans>,
    /// The cutover fence, if one was raised: who holds it, since when, the lease's end.
    pub fence: Option<capture::Fence>,
    /// Tables sqlite2pg copied whose SQLite table is gone (dropped, or renamed: the new name
    /// is copied as a table of its own). Not followed; the Postgres copy stays until dropped.
    pub gone_from_sqlite: Vec<String>,
    /// Format of sqlite2pg's objects in the SQLite file (None: not installed).
    pub sqlite_format: Option<i64>,
    /// Format of the `sqlite2pg` schema in Postgres (None: not there).
    pub postgres_format: Option<i32>,
    /// The formats this sqlite2pg writes (SQLite, Postgres).
    pub formats_written: (i64, i32),
    /// Which way changes flow: `forward` (SQLite to Postgres) until the cutover, `reverse`
    /// (Postgres back into SQLite) after it, `none` once fallen back.
    pub direction: &'static str,
    /// After the cutover: the app's changes on Postgres not yet in SQLite.
    pub reverse_lag_changes: Option<i64>,
    /// After the cutover: the age of the oldest of them, in seconds (0 when caught up).
    pub reverse_lag_seconds: Option<f64>,
    /// After the cutover: what the reverse stream applied (kept in the SQLite file).
    pub reverse_position: Option<restore::Position>,
    /// The fallback fence on Postgres, if one was raised.
    pub postgres_fence: Option<reverse::Fence>,
    /// The fallback record, once fallen back.
    pub fallback: Option<reverse::Fallback>,
    /// Tables waiting to be re-synchronized (or being re-synchronized): a migration rebuilt or
    /// redefined them, so changes may have bypassed the changelog.
    pub resync_pending: Vec<String>,
}

fn pg(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| Error::from_pg(format!("cannot {what}"), e)
}

/// Collects the status.
pub async fn collect(client: &Client, db: &Databases) -> Result<Status> {
    let tenant = db.tenant.as_str();
    let conn = sqlite::open_read_only(&db.source, db.busy_timeout)?;
    let installed = capture::installed(&conn)?;
    let has_state = state::state_table_exists(client, "stream").await?;
    let mut status = Status {
        phase: Phase::NotStarted,
        daemon_running: false,
        capture_installed: installed.is_some(),
        tables: Vec::new(),
        position: None,
        changelog_newest: None,
        lag_changes: None,
        lag_seconds: None,
        changes_applied: None,
        last_error: None,
        cutover: None,
        foreign_keys_kept: 0,
        orphans: Vec::new(),
        resync_pending: Vec::new(),
        gone_from_sqlite: Vec::new(),
        fence: if installed.is_some() {
            capture::fence_state(&conn)?
        } else {
            None
        },
        sqlite_format: installed.as_ref().map(|i| i.format),
        postgres_format: None,
        formats_written: (crate::sql::SQLITE_FORMAT, crate::sql::PG_FORMAT),
        direction: "forward",
        reverse_lag_changes: None,
        reverse_lag_seconds: None,
        reverse_position: None,
        postgres_fence: None,
        fallback: None,
    };
    let pg_format = state::format_version(client).await?;
    status.postgres_format = (pg_format > 0).then_some(pg_format);
    if !has_state {
        return Ok(status);
    }
    status.daemon_running = state::daemon_running(client, tenant).await?;
    for r in client
        .query(&format!("SELECT source_table, phase, rows_copied, rows_total FROM {STATE_SCHEMA}.table_state t WHERE {} ORDER BY source_table", state::of_tenant("t", 1)), &[&tenant])
        .await
        .map_err(pg("read snapshot progress"))?
    {
        let stored: String = r.get(1);
        let table: String = r.get(0);
        let phase = state::Phase::parse(&stored).ok_or_else(|| {
            Error::new(
                ErrorKind::State,
                format!("unknown phase '{stored}' stored for table {table}: was the state written by a newer sqlite2pg?"),
            )
        })?;
        status.tables.push(TableStatus { table, phase, rows_copied: r.get(2), rows_total: r.get(3) });
    }
    let present: Vec<String> = sqlite::schema::read_tables(&conn)?
        .into_iter()
        .map(|t| t.name)
        .collect();
    status.gone_from_sqlite = status
        .tables
        .iter()
        .filter(|t| !present.contains(&t.table))
        .map(|t| t.table.clone())
        .collect();
    let stream = state::stream_load(client, tenant).await?;
    let snapshot_done =
        !status.tables.is_empty() && status.tables.iter().all(|t| t.phase == state::Phase::Ready);
    status.phase = if snapshot_done {
        Phase::Streaming
    } else if status.tables.is_empty() {
        Phase::NotStarted
    } else {
        Phase::Snapshot
    };
    status.cutover = state::cutover_load(client, tenant).await?;
    if status.cutover.is_some() {
        status.phase = Phase::CutOver;
        status.direction = "reverse";
        status.postgres_fence = reverse::fence_state(client, tenant).await?;
        status.fallback = reverse::fallback_load(client, tenant).await?;
        if status.fallback.is_some() {
            status.phase = Phase::FellBack;
            status.direction = "none";
        } else if !db.two_way() {
            // One way: nothing flows back.
            status.direction = "none";
        } else if reverse::capture_installed(client, &db.schema).await? {
            let (pending, age) = reverse::backlog(client, tenant).await?;
            status.reverse_lag_changes = Some(pending);
            status.reverse_lag_seconds = Some(age.unwrap_or(0.0).max(0.0));
            status.reverse_position = Some(restore::position(&conn)?);
        }
    }
    if let Some(st) = stream {
        status.position = Some(st.position);
        status.changes_applied = Some(st.changes_applied);
        status.last_error = st.last_error;
        if installed.is_some() {
            let (newest, pending, oldest_at) = changes::pending(&conn, st.position)?;
            if let Some(inst) = &installed {
                status.resync_pending = changes::pending_resyncs(&conn, st.position)?
                    .into_iter()
                    .filter_map(|id| {
                        inst.tables
                            .iter()
                            .find(|(i, _)| *i == id)
                            .map(|(_, n)| n.clone())
                    })
                    .collect();
            }
            status.changelog_newest = Some(newest);
            status.lag_changes = Some(pending);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            status.lag_seconds = Some(
                oldest_at
                    .map(|at| (now - julian_to_unix(at)).max(0.0))
                    .unwrap_or(0.0),
            );
        }
    }
    Ok(status)
}

/// A warning when capture is installed but no daemon streams: the changelog then grows with
/// every app write (`run --snapshot-only` leaves this state).
pub fn idle_capture(s: &Status) -> Option<String> {
    if !s.capture_installed
        || s.daemon_running
        || matches!(s.phase, Phase::CutOver | Phase::FellBack)
    {
        return None;
    }
    Some(format!(
        "installed, but no daemon is streaming: the changelog in the SQLite file grows with every app write ({} changes not applied). `sqlite2pg run` streams them; `sqlite2pg uninstall` removes the triggers and the changelog",
        s.lag_changes
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into())
    ))
}

/// Adds the foreign keys kept aside and their orphans (a scan of each child table, so only
/// the `status` command asks, not cutover's polling).
pub async fn add_orphans(client: &Client, schema: &str, status: &mut Status) -> Result<()> {
    if status.phase != Phase::Streaming {
        return Ok(());
    }
    let kept = foreign_keys::kept(client, schema).await?;
    status.foreign_keys_kept = kept.len();
    for fk in &kept {
        let o = foreign_keys::orphans(client, fk, 3).await?;
        if o.count > 0 {
            status.orphans.push(o);
        }
    }
    Ok(())
}

/// Prints the status for a person.
pub fn print_human(s: &Status, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "phase:      {}{}",
        s.phase,
        if s.daemon_running {
            " (daemon running)"
        } else {
            " (no daemon running)"
        }
    )?;
    match (s.capture_installed, idle_capture(s)) {
        (_, Some(w)) => writeln!(out, "capture:    {w}")?,
        (true, None) => writeln!(out, "capture:    installed")?,
        (false, None) => writeln!(out, "capture:    not installed")?,
    }
    if let Some(f) = &s.fence {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let state = if f.permanent {
            "permanent (the cutover is recorded: the app belongs on Postgres)".to_string()
        } else if f.active {
            format!(
                "UP: app writes to SQLite fail; lease ends in {:.1} s unless the cutover renews it (`sqlite2pg cutover --abort` lifts it now)",
                f.until_unix - now
            )
        } else {
            format!(
                "lapsed {:.0} s ago (the cutover stopped renewing it): the app writes to SQLite",
                now - f.until_unix
            )
        };
        writeln!(
            out,
            "fence:      {state}; raised {:.0} s ago by {}",
            now - f.since_unix,
            f.holder
        )?;
    }
    let format = |f: Option<String>| f.unwrap_or_else(|| "none".into());
    writeln!(
        out,
        "formats:    SQLite {}, PostgreSQL {} (sqlite2pg {} writes {} and {}; `run` upgrades older ones in place)",
        format(s.sqlite_format.map(|f| f.to_string())),
        format(s.postgres_format.map(|f| f.to_string())),
        env!("CARGO_PKG_VERSION"),
        s.formats_written.0,
        s.formats_written.1
    )?;
    if let Some(p) = s.position {
        writeln!(
            out,
            "position:   {p} applied of {} in the changelog",
            s.changelog_newest
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into())
        )?;
    }
    if let (Some(c), Some(secs)) = (s.lag_changes, s.lag_seconds) {
        writeln!(out, "lag:        {c} changes, {secs:.1} s")?;
    }
    for t in &s.gone_from_sqlite {
        writeln!(
            out,
            "gone:       table {t} is in Postgres but no longer in SQLite (dropped, or renamed: the new name is copied as its own table); it is not followed. Drop it in Postgres before the app moves there"
        )?;
    }
    for t in &s.resync_pending {
        writeln!(
            out,
            "resyncing:  table {t} (rebuilt or redefined by a migration; every row is compared, only differences are written)"
        )?;
    }
    if let Some(n) = s.changes_applied {
        writeln!(out, "applied:    {n} changes since the stream started")?;
    }
    for t in &s.tables {
        let total = t
            .rows_total
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into());
        writeln!(
            out,
            "table {:<24} {:<8} {}/{} rows",
            t.table,
            t.phase.as_str(),
            t.rows_copied,
            total
        )?;
    }
    if let Some(c) = &s.cutover {
        writeln!(
            out,
            "cutover:    at {} (fence to done {:.0} ms, {} rows verified, position {})",
            c.fenced_at, c.window_ms, c.rows_verified, c.position
        )?;
    }
    if s.cutover.is_some() {
        writeln!(
            out,
            "direction:  {}",
            match s.direction {
                "reverse" =>
                    "reverse: the app writes on Postgres; `sqlite2pg run` follows it back into SQLite, so `sqlite2pg fallback` loses nothing",
                "none" if s.fallback.is_some() => "none: fallen back, SQLite is the database",
                "none" =>
                    "none: cut over one way (no capture on Postgres: shared tables, or [fleet] one_way), Postgres is the database and nothing follows back",
                other => other,
            }
        )?;
    }
    if let (Some(c), Some(secs)) = (s.reverse_lag_changes, s.reverse_lag_seconds) {
        writeln!(
            out,
            "reverse:    {c} changes on Postgres not yet in SQLite, oldest {secs:.1} s{}",
            s.reverse_position
                .map(|p| format!("; {} applied", p.changes))
                .unwrap_or_default()
        )?;
    }
    if let Some(f) = &s.postgres_fence {
        let state = if f.permanent {
            "permanent (the fallback is recorded: the app belongs on SQLite)"
        } else if f.active {
            "UP: app writes to Postgres fail while the fallback works (`sqlite2pg fallback --abort` lifts it)"
        } else {
            "lapsed (the fallback stopped renewing it): the app writes to Postgres"
        };
        writeln!(
            out,
            "pg fence:   {state}; held by {} until {}",
            f.holder, f.until
        )?;
    }
    if let Some(f) = &s.fallback {
        writeln!(
            out,
            "fallback:   at {} (fence to done {:.0} ms, {} rows verified, {} AUTOINCREMENT counters moved). `sqlite2pg uninstall` removes what is left of sqlite2pg",
            f.done_at, f.window_ms, f.rows_verified, f.sequences_moved
        )?;
    }
    if s.foreign_keys_kept > 0 {
        writeln!(
            out,
            "foreign keys: {} kept aside until cutover (SQLite does not enforce them, so Postgres holds the same rows)",
            s.foreign_keys_kept
        )?;
    }
    for o in &s.orphans {
        writeln!(
            out,
            "orphans:    {} rows break {}; cutover refuses them unless --orphans keep",
            o.count,
            o.foreign_key.describe()
        )?;
        for e in &o.examples {
            writeln!(out, "            {e}")?;
        }
    }
    if let Some(e) = &s.last_error {
        writeln!(out, "last error: {e}")?;
    }
    Ok(())
}
