//! `run`, the daemon: passes of plan, capture, snapshot (or resume) and stream, until a stop
//! is asked for. A schema change ends a pass and the next one plans again; SQLite held busy
//! by the app waits and starts over; an error only a person can fix keeps the daemon up,
//! waiting, and it goes on by itself once the cause is fixed.

use std::io::Write;
use std::time::{Duration, Instant};

use super::reverse_stream;
use super::snapshot;
use super::stream;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result, RetryPolicy};
use crate::phase::Phase;
use crate::plan::{self, Plan};
use crate::shutdown::{Backoff, Shutdown};
use crate::sqlite;

/// How `run` behaves, from the command line and the config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// Copy a snapshot and return (capture stays installed).
    pub snapshot_only: bool,
    /// Fallback poll of the changelog when no file notification arrives.
    pub poll_interval: Duration,
    /// Most changelog rows per SQLite read.
    pub batch_changes: usize,
    /// Run by a fleet's daemon beside the other tenants (`None`: a daemon of its own).
    pub link: Option<super::FleetLink>,
}

/// What `run --snapshot-only` leaves behind, and what to do about it.
const CAPTURE_LEFT: &str = "capture stays installed: every app write from now on adds a row to the changelog in the SQLite file, and nothing prunes it until `sqlite2pg run` streams it to Postgres. `sqlite2pg status` shows its size; `sqlite2pg uninstall` removes the triggers and the changelog (a later `run` copies afresh)";

/// How often a daemon waiting for a person looks again.
const NEEDS_PERSON_RETRY: Duration = Duration::from_secs(3);

/// How one pass ended.
enum Pass {
    /// Done: stopped, cut over, or the snapshot alone was asked for.
    Done,
    /// The schema changed: plan again and go on.
    Again,
}

/// Runs passes until a stop is asked for, the migration is cut over, or an error that the
/// daemon cannot wait out (before anything streamed, or one no person can fix by editing
/// SQLite) ends it.
pub async fn run(cfg: &Config, opts: &Options, shutdown: &Shutdown) -> Result<()> {
    let mut busy_backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    // Once a pass has streamed, the daemon is what keeps Postgres following: an error that
    // needs a person (a value Postgres rejects, a shape it lacks until the app's migration
    // runs there too) keeps it up, saying so, and it goes on by itself once the cause is fixed.
    let mut streamed = false;
    let mut outage_backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut outage = false;
    // A daemon that waits for a person is still up: from its first wait on it holds the
    // presence lock on a connection of its own for the rest of its life, so `status` shows it
    // running (with what it waits for) between its retries, and a cutover waits for it rather
    // than draining around it.
    let mut presence: Option<tokio_postgres::Client> = None;
    // Capture already in the SQLite file: a run reached the target before.
    let busy = Duration::from_millis(cfg.busy_timeout_ms);
    let resumed = sqlite::open_read_only_now(&cfg.source, busy)
        .and_then(|c| sqlite::read_now(&c, busy, sqlite::capture::installed))
        .is_ok_and(|i| i.is_some());
    loop {
        let pass = run_pass(cfg, opts, shutdown, &mut streamed, &mut outage).await;
        let stopping = shutdown.requested();
        match pass {
            Ok(Pass::Done) => return Ok(()),
            Ok(Pass::Again) => {
                busy_backoff.reset();
                outage_backoff.reset();
            }
            Err(e) if stopping => return Err(e),
            // The error kind's retry policy, as the follower's: a transient error is waited
            // out, and the pass starts over. Postgres going away between passes (a restart
            // while the pass re-planned after the app's migration, say) is one. An unreachable
            // target is waited out only once the address is known to be right: after a pass
            // streamed, on a migration a run resumes (restarted while Postgres restarts, say),
            // when Postgres itself said it is restarting, or in a fleet's daemon (the address
            // is the fleet's; a tenant new to it, stopped by a Postgres restart, was an error
            // for a person to read, found by the differential tester's fleet mode). Before
            // that, on a new migration of its own, it is more likely a wrong address.
            Err(e)
                if e.kind().retry_policy() == RetryPolicy::RetryLater
                    && !opts.snapshot_only
                    && (e.kind() != ErrorKind::TargetUnreachable
                        || streamed
                        || resumed
                        || opts.link.is_some()
                        || e.server_restarting()) =>
            {
                let (wait, why) = if e.kind() == ErrorKind::TargetUnreachable {
                    crate::metrics::unreachable(&e.to_string());
                    outage = true;
                    (
                        outage_backoff.next_wait(),
                        "Postgres is unreachable; starting over once it answers, nothing is lost meanwhile",
                    )
                } else {
                    (
                        busy_backoff.next_wait(),
                        "SQLite is busy; starting over when the app lets go",
                    )
                };
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "{why}");
                if !shutdown.sleep(wait).await {
                    return stopped();
                }
            }
            Err(e) if streamed && !opts.snapshot_only && waits_for_person(e.kind()) => {
                // A fleet's daemon holds every tenant's presence on one connection.
                if opts.link.is_none() && presence.as_ref().is_none_or(|c| c.is_closed()) {
                    presence = hold_presence(cfg).await;
                }
                crate::metrics::set_phase(Phase::Waiting);
                let text = crate::conninfo::redact_in_text(&crate::error::chain_text(&e));
                crate::metrics::needs_operator(e.kind().label(), &text);
                record_waiting(cfg, presence.as_ref(), &text).await;
                tracing::error!(
                    error = %text,
                    hint = e.kind().hint(),
                    retry_in_secs = NEEDS_PERSON_RETRY.as_secs(),
                    "waiting for a person: nothing is applied until this is fixed; the daemon stays up and goes on by itself once it is (position kept)"
                );
                if !shutdown.sleep(NEEDS_PERSON_RETRY).await {
                    return stopped();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A connection holding the presence lock, when Postgres answers (best effort: without it
/// `status` only sees the daemon while a pass holds the run lock).
async fn hold_presence(cfg: &Config) -> Option<tokio_postgres::Client> {
    let client = crate::pg::connect(cfg.require_target().ok()?).await.ok()?;
    crate::pg::state::take_presence(&client, cfg.tenant_id())
        .await
        .ok()
        .filter(|held| *held)
        .map(|_| client)
}

/// Keeps why the daemon waits in its state, where `status` shows it (a plan that fails, as
/// after an app's migration Postgres cannot take yet, is no failed apply, which keeps its own).
/// Best effort: Postgres may be what fails. Cleared by the next applied batch.
async fn record_waiting(cfg: &Config, presence: Option<&tokio_postgres::Client>, text: &str) {
    let tenant = cfg.tenant_id();
    if let Some(c) = presence.filter(|c| !c.is_closed()) {
        let _ = crate::pg::state::stream_error(c, tenant, text).await;
        return;
    }
    let Ok(target) = cfg.require_target() else {
        return;
    };
    if let Ok(c) = crate::pg::pool::session(target).await {
        let _ = crate::pg::state::stream_error(&*c, tenant, text).await;
        crate::pg::pool::give_back(c, target).await;
    }
}

/// Errors that a fix in SQLite or Postgres clears, which the daemon waits out.
fn waits_for_person(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Conversion | ErrorKind::Schema | ErrorKind::Target
    )
}

fn stopped() -> Result<()> {
    crate::metrics::set_phase(Phase::Stopped);
    tracing::info!("stopped cleanly; `sqlite2pg run` resumes from the stored position");
    Ok(())
}

/// One pass: plan, capture, snapshot (or resume it), stream.
async fn run_pass(
    cfg: &Config,
    opts: &Options,
    shutdown: &Shutdown,
    streamed: &mut bool,
    outage: &mut bool,
) -> Result<Pass> {
    let busy = Duration::from_millis(cfg.busy_timeout_ms);
    let target = cfg.require_target()?.clone();
    let tables = plan::source_tables(cfg)?;
    // A fleet's tenant plans and snapshots on a session of the pool, one another tenant let
    // go when there is one: a new connection is a backend forked with cold caches, and each
    // tenant's first pass opened one.
    let mut client = crate::pg::pool::session(&target).await?;
    let plan = plan::load_on(cfg, tables, &client).await?;
    let plan = match &opts.link {
        Some(link) => link.plans.share(plan),
        None => std::sync::Arc::new(plan),
    };
    if std::mem::take(outage) {
        crate::metrics::reconnected();
        tracing::info!("Postgres is reachable again; resuming");
    }
    if crate::pg::state::cutover_load(&*client, cfg.tenant_id())
        .await?
        .is_some()
    {
        *streamed = true;
        return follow_back(cfg, opts, shutdown, &plan, client).await;
    }
    refuse_lossy(&plan)?;
    for f in plan.findings.iter().filter(|f| f.table.is_empty()) {
        tracing::warn!(hint = %f.hint, "{}", f.message);
    }
    // Capture first: from here on every change is in the changelog, so the snapshot and
    // the stream together miss nothing.
    let capturable: Vec<_> = plan.tables.iter().map(|t| &t.source).collect();
    let installed = tokio::task::block_in_place(|| {
        let rw = sqlite::open_read_write(&cfg.source, busy)?;
        sqlite::capture::install(&rw, &capturable)
    })?;
    stream::prepare(
        &client,
        cfg.tenant_id(),
        &installed,
        &plan.casts,
        &cfg.source,
        busy,
    )
    .await?;
    let snapshot_opts = snapshot::Options {
        source: cfg.source.clone(),
        schema: cfg.target_schema.clone(),
        tenant: cfg.tenant_id().to_string(),
        rows: crate::pg::Rows::of(cfg.tenant_column.as_deref(), cfg.tenant_id()),
        chunk_rows: cfg.chunk_rows,
        chunk_time: Duration::from_millis(100),
        busy_timeout: busy,
        reshaped: installed.reshaped.clone(),
        stop: shutdown.clone(),
        target: target.clone(),
    };
    let started = Instant::now();
    let summary = snapshot::run(&mut client, &plan, &snapshot_opts).await?;
    if summary.stopped || opts.snapshot_only {
        // The process exits next, and its backend may outlive it for a moment: a `status`
        // right after must not take the run lock it still holds for a daemon at work.
        crate::pg::state::let_go(&client).await;
    }
    if summary.stopped {
        crate::metrics::set_phase(Phase::Stopped);
        tracing::info!(
            "stopped during the snapshot; `sqlite2pg run` resumes at the last copied chunk"
        );
        return Ok(Pass::Done);
    }
    print_snapshot_summary(&summary, started.elapsed());
    if opts.snapshot_only {
        // The copy is done but capture stays: say so loudly, it costs the app a row per write.
        eprintln!("{CAPTURE_LEFT}");
        tracing::warn!("{CAPTURE_LEFT}");
        return Ok(Pass::Done);
    }
    let stream_opts = stream::Options {
        db: super::Databases::of(cfg)?,
        poll_interval: opts.poll_interval,
        batch_changes: opts.batch_changes,
        batch_bytes: 32 << 20,
        until: super::Until::Stopped,
        link: opts.link.clone(),
    };
    // The stream goes on on this connection, which holds the run lock since the snapshot, and
    // retakes the lock on every reconnect: the one that applies is the one that holds it, so
    // `status` and cutover see a live daemon throughout.
    *streamed = true;
    match stream::run(
        &plan,
        &installed,
        &stream_opts,
        shutdown.clone(),
        Some(client),
    )
    .await?
    {
        stream::End::Shutdown => {
            stopped()?;
            Ok(Pass::Done)
        }
        // The next pass follows Postgres back into SQLite.
        stream::End::CutOver => Ok(Pass::Again),
        stream::End::CaughtUp => Ok(Pass::Done),
        stream::End::SchemaChanged => Ok(Pass::Again),
    }
}

/// After the cutover: the reverse stream, until the fallback or a stop.
async fn follow_back(
    cfg: &Config,
    opts: &Options,
    shutdown: &Shutdown,
    plan: &Plan,
    client: crate::pg::pool::Session,
) -> Result<Pass> {
    let fell_back = crate::pg::reverse::fallback_load(&*client, cfg.tenant_id()).await?;
    let db = super::Databases::of(cfg)?;
    // A tenant cut over two way whose fleet says one way since: its app's writes on Postgres
    // are still captured for a way back, and would wait there unfollowed.
    let captured = !db.two_way()
        && !db.shared()
        && crate::pg::reverse::capture_installed(&*client, &db.schema).await?;
    // The reverse stream connects on its own: this one goes back, so that a fleet's tenant
    // holds one connection at a time.
    crate::pg::pool::give_back(client, &db.target).await;
    if let Some(f) = fell_back {
        crate::metrics::set_phase(Phase::FellBack);
        if opts.link.is_some() {
            // A fleet's tenant that fell back: done, beside the others that go on.
            tracing::info!(at = %f.done_at, "fell back to SQLite: nothing to follow");
            return Ok(Pass::Done);
        }
        return Err(Error::new(
            ErrorKind::State,
            format!(
                "this migration fell back to SQLite at {} (window {:.0} ms): SQLite is the database and there is nothing to follow. `sqlite2pg uninstall` removes sqlite2pg's objects from both sides; a later `run` starts a new migration",
                f.done_at, f.window_ms
            ),
        ));
    }
    if !db.two_way() {
        // One way: nothing follows back (what Postgres may still capture is said below).
        crate::metrics::set_phase(Phase::CutOver);
        if db.shared() {
            tracing::info!("cut over one way (shared tables): nothing to follow");
        } else if captured {
            tracing::warn!(
                "this tenant was cut over two way (Postgres captures its app's writes for a way back), but [fleet] now says one_way = true: nothing follows them back. Set one_way = false to follow them (nothing is lost meanwhile), or `sqlite2pg --tenant NAME uninstall` once SQLite is given up"
            );
        } else {
            tracing::info!("cut over one way ([fleet] one_way): nothing to follow");
        }
        return Ok(Pass::Done);
    }
    if opts.snapshot_only {
        return Err(Error::new(
            ErrorKind::State,
            "the migration is cut over: there is no snapshot to take. `sqlite2pg run` follows Postgres back into SQLite",
        ));
    }
    let ropts = reverse_stream::Options {
        db,
        poll_interval: opts.poll_interval,
        batch_changes: opts.batch_changes,
        until: super::Until::Stopped,
        link: opts.link.clone(),
    };
    match reverse_stream::run(plan, &ropts, shutdown.clone()).await? {
        reverse_stream::End::Shutdown => {
            stopped()?;
            Ok(Pass::Done)
        }
        reverse_stream::End::CaughtUp => Ok(Pass::Done),
        reverse_stream::End::FellBack => {
            tracing::info!(
                "the fallback is recorded: SQLite is the database again; the daemon exits"
            );
            Ok(Pass::Done)
        }
    }
}

/// Refuses a plan whose check found values or shapes that would be lost or altered.
fn refuse_lossy(plan: &Plan) -> Result<()> {
    if !plan.has_errors() {
        return Ok(());
    }
    let mut msg = String::from("the schema check found problems that would lose or alter data:");
    for f in plan
        .findings
        .iter()
        .filter(|f| f.severity == plan::Severity::Error)
    {
        let col = f
            .column
            .as_ref()
            .map(|c| format!(".{c}"))
            .unwrap_or_default();
        msg.push_str(&format!(
            "\n  {}{col}: {} (fix: {})",
            f.table, f.message, f.hint
        ));
    }
    msg.push_str("\nrun `sqlite2pg check` for the full report");
    Err(Error::new(ErrorKind::Schema, msg))
}

/// Says what the snapshot copied (stdout: the operator watching the first run reads it).
fn print_snapshot_summary(summary: &snapshot::Summary, elapsed: Duration) {
    let total: i64 = summary.tables.iter().map(|(_, n)| n).sum();
    let mut out = std::io::stdout().lock();
    let mut lines: Vec<String> = summary
        .tables
        .iter()
        .map(|(t, n)| format!("{t}: {n} rows"))
        .collect();
    lines.extend(summary.warnings.iter().map(|w| format!("warning: {w}")));
    lines.push(format!(
        "snapshot complete: {total} rows in {} tables in {:.1}s",
        summary.tables.len(),
        elapsed.as_secs_f64()
    ));
    for line in lines {
        // A closed stdout (the daemon's terminal gone) must not stop the migration.
        if writeln!(out, "{line}").is_err() {
            tracing::info!("{line}");
        }
    }
}
