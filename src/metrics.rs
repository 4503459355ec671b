//! Every metric sqlite2pg exports, defined and registered once; the dashboard and the alert
//! rules use exactly these names. Stages report through the functions below (no-ops until
//! `init` ran), and `serve` answers `/metrics` and `/healthz`.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::error::{Error, ErrorKind, Result};
use crate::phase::Phase;

/// `sqlite2pg_phase{phase}`: 1 for the current phase.
pub const PHASE: &str = "sqlite2pg_phase";
/// `sqlite2pg_snapshot_rows_copied{table}`.
pub const SNAPSHOT_ROWS_COPIED: &str = "sqlite2pg_snapshot_rows_copied";
/// `sqlite2pg_snapshot_source_rows{table}`.
pub const SNAPSHOT_ROWS_TOTAL: &str = "sqlite2pg_snapshot_source_rows";
/// `sqlite2pg_changes_applied_total{table,operation}`.
pub const CHANGES_APPLIED: &str = "sqlite2pg_changes_applied_total";
/// `sqlite2pg_changelog_pending_rows`.
pub const CHANGELOG_PENDING: &str = "sqlite2pg_changelog_pending_rows";
/// `sqlite2pg_replication_lag_seconds`.
pub const LAG_SECONDS: &str = "sqlite2pg_replication_lag_seconds";
/// `sqlite2pg_replication_lag_changes`.
pub const LAG_CHANGES: &str = "sqlite2pg_replication_lag_changes";
/// `sqlite2pg_apply_batch_duration_seconds` (histogram).
pub const BATCH_DURATION: &str = "sqlite2pg_apply_batch_duration_seconds";
/// `sqlite2pg_apply_batch_changes` (histogram).
pub const BATCH_CHANGES: &str = "sqlite2pg_apply_batch_changes";
/// `sqlite2pg_changelog_prunes_total`.
pub const CHANGELOG_PRUNES: &str = "sqlite2pg_changelog_prunes_total";
/// `sqlite2pg_changelog_pruned_rows_total`.
pub const CHANGELOG_PRUNED: &str = "sqlite2pg_changelog_pruned_rows_total";
/// `sqlite2pg_postgres_reconnects_total`.
pub const RECONNECTS: &str = "sqlite2pg_postgres_reconnects_total";
/// `sqlite2pg_errors_total{kind}`.
pub const ERRORS: &str = "sqlite2pg_errors_total";
/// `sqlite2pg_position`.
pub const POSITION: &str = "sqlite2pg_position";
/// `sqlite2pg_cutover_window_seconds`.
pub const CUTOVER_WINDOW: &str = "sqlite2pg_cutover_window_seconds";
/// `sqlite2pg_fence_active`: 1 while the cutover fence blocks the app's SQLite writes.
pub const FENCE_ACTIVE: &str = "sqlite2pg_fence_active";
/// `sqlite2pg_fence_lease_expiry_timestamp_seconds`: when the fence ends unless renewed
/// (0: no fence; +Inf: permanent, the cutover is recorded).
pub const FENCE_EXPIRY: &str = "sqlite2pg_fence_lease_expiry_timestamp_seconds";
/// `sqlite2pg_needs_operator{kind}`: 1 while the daemon waits for a person to fix an error of
/// this kind (conversion, schema, target); it goes on by itself once fixed.
pub const NEEDS_OPERATOR: &str = "sqlite2pg_needs_operator";
/// `sqlite2pg_replication_direction{direction}`: 1 for the way changes flow now (`forward`:
/// SQLite to Postgres; `reverse`: Postgres back into SQLite, after the cutover).
pub const DIRECTION: &str = "sqlite2pg_replication_direction";
/// `sqlite2pg_reverse_lag_seconds`: age of the oldest change on Postgres not yet in SQLite.
pub const REVERSE_LAG_SECONDS: &str = "sqlite2pg_reverse_lag_seconds";
/// `sqlite2pg_reverse_lag_changes`: changes on Postgres not yet in SQLite.
pub const REVERSE_LAG_CHANGES: &str = "sqlite2pg_reverse_lag_changes";
/// `sqlite2pg_build_info{version}`: always 1.
pub const BUILD_INFO: &str = "sqlite2pg_build_info";
/// `sqlite2pg_tenant_phase{tenant, phase}`: 1 for the phase each tenant of a fleet is in (one
/// series per tenant).
pub const TENANT_PHASE: &str = "sqlite2pg_tenant_phase";
/// `sqlite2pg_tenant_lag_seconds{tenant}`: each tenant's lag, whichever way it streams.
pub const TENANT_LAG_SECONDS: &str = "sqlite2pg_tenant_lag_seconds";
/// `sqlite2pg_tenant_needs_operator{tenant}`: 1 while a tenant waits for a person.
pub const TENANT_NEEDS_OPERATOR: &str = "sqlite2pg_tenant_needs_operator";
/// `sqlite2pg_fleet_tenants{state}`: tenants running, paused (file gone) or stopped on an error.
pub const FLEET_TENANTS: &str = "sqlite2pg_fleet_tenants";
/// `sqlite2pg_fleet_connections{state}`: the pool's connections in use, sessions given back
/// and not yet taken (idle), and connects waiting.
pub const FLEET_CONNECTIONS: &str = "sqlite2pg_fleet_connections";
/// `sqlite2pg_fleet_session_wait_seconds`: how long a fleet's tenant with work waited for a
/// session of the pool (a long wait: the pool is too small for the writes, `--max-connections`).
pub const FLEET_SESSION_WAIT: &str = "sqlite2pg_fleet_session_wait_seconds";

/// Every name above, for tests that check the dashboard and the rules against a scrape.
pub const ALL: &[&str] = &[
    PHASE,
    SNAPSHOT_ROWS_COPIED,
    SNAPSHOT_ROWS_TOTAL,
    CHANGES_APPLIED,
    CHANGELOG_PENDING,
    LAG_SECONDS,
    LAG_CHANGES,
    BATCH_DURATION,
    BATCH_CHANGES,
    CHANGELOG_PRUNES,
    CHANGELOG_PRUNED,
    RECONNECTS,
    ERRORS,
    POSITION,
    CUTOVER_WINDOW,
    FENCE_ACTIVE,
    FENCE_EXPIRY,
    NEEDS_OPERATOR,
    DIRECTION,
    REVERSE_LAG_SECONDS,
    REVERSE_LAG_CHANGES,
    BUILD_INFO,
    TENANT_PHASE,
    TENANT_LAG_SECONDS,
    TENANT_NEEDS_OPERATOR,
    FLEET_TENANTS,
    FLEET_CONNECTIONS,
    FLEET_SESSION_WAIT,
];

tokio::task_local! {
    /// The fleet's tenant whose daemon runs in this task (unset: a daemon of its own).
    static TENANT: String;
}

/// Runs `work` as the daemon of a fleet's tenant: what it reports of its phase, lag and waits
/// goes to that tenant's series, not to the single-file ones.
pub fn for_tenant<F: std::future::Future>(
    tenant: String,
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    TENANT.scope(tenant, work)
}

fn tenant() -> Option<String> {
    TENANT.try_with(|t| t.clone()).ok()
}

/// The values of `sqlite2pg_replication_direction`'s label.
const DIRECTIONS: [&str; 2] = ["forward", "reverse"];

struct Metrics {
    registry: Registry,
    phase: IntGaugeVec,
    rows_copied: IntGaugeVec,
    rows_total: IntGaugeVec,
    applied: IntCounterVec,
    pending: IntGauge,
    lag_seconds: Gauge,
    lag_changes: IntGauge,
    batch_duration: Histogram,
    batch_changes: Histogram,
    prunes: IntCounter,
    pruned: IntCounter,
    reconnects: IntCounter,
    errors: IntCounterVec,
    position: IntGauge,
    cutover_window: Gauge,
    fence_active: IntGauge,
    fence_expiry: Gauge,
    needs_operator: IntGaugeVec,
    direction: IntGaugeVec,
    reverse_lag_seconds: Gauge,
    reverse_lag_changes: IntGauge,
    tenant_phase: IntGaugeVec,
    tenant_lag: prometheus::GaugeVec,
    tenant_needs_operator: IntGaugeVec,
    fleet_tenants: IntGaugeVec,
    fleet_connections: IntGaugeVec,
    fleet_session_wait: Histogram,
    /// Each tenant's phase series, to drop the old one when it moves.
    tenant_phases: Mutex<std::collections::HashMap<String, &'static str>>,
    /// Why /healthz is unhealthy, if it is.
    unhealthy: Mutex<Option<String>>,
    max_lag: Mutex<Duration>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

fn build() -> prometheus::Result<Metrics> {
    let registry = Registry::new();
    let m = Metrics {
        phase: IntGaugeVec::new(
            Opts::new(PHASE, "1 for the phase the daemon is in"),
            &["phase"],
        )?,
        rows_copied: IntGaugeVec::new(
            Opts::new(SNAPSHOT_ROWS_COPIED, "Rows copied by the snapshot"),
            &["table"],
        )?,
        rows_total: IntGaugeVec::new(
            Opts::new(
                SNAPSHOT_ROWS_TOTAL,
                "Rows to copy (SQLite's count when the table's copy started)",
            ),
            &["table"],
        )?,
        applied: IntCounterVec::new(
            Opts::new(
                CHANGES_APPLIED,
                "Row states applied to Postgres by the stream",
            ),
            &["table", "operation"],
        )?,
        pending: IntGauge::new(CHANGELOG_PENDING, "Changelog rows not yet applied")?,
        lag_seconds: Gauge::new(
            LAG_SECONDS,
            "Age of the oldest change not yet applied (0 when caught up)",
        )?,
        lag_changes: IntGauge::new(
            LAG_CHANGES,
            "Changes recorded in SQLite and not yet applied",
        )?,
        batch_duration: Histogram::with_opts(
            HistogramOpts::new(
                BATCH_DURATION,
                "Time to apply one batch, Postgres commit included",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?,
        batch_changes: Histogram::with_opts(
            HistogramOpts::new(BATCH_CHANGES, "Changelog rows per applied batch")
                .buckets(vec![1.0, 10.0, 100.0, 1000.0, 5000.0, 10000.0, 50000.0]),
        )?,
        prunes: IntCounter::new(
            CHANGELOG_PRUNES,
            "Prunes of the SQLite changelog (each a few short write transactions on the file)",
        )?,
        pruned: IntCounter::new(
            CHANGELOG_PRUNED,
            "Applied changelog rows deleted from the SQLite file",
        )?,
        reconnects: IntCounter::new(RECONNECTS, "Reconnections to Postgres after it went away")?,
        errors: IntCounterVec::new(Opts::new(ERRORS, "Errors by kind"), &["kind"])?,
        position: IntGauge::new(POSITION, "Highest changelog sequence number applied")?,
        needs_operator: IntGaugeVec::new(
            Opts::new(
                NEEDS_OPERATOR,
                "1 while the daemon waits for a person to fix an error of this kind",
            ),
            &["kind"],
        )?,
        fence_active: IntGauge::new(
            FENCE_ACTIVE,
            "1 while the cutover fence blocks the app's writes to SQLite",
        )?,
        fence_expiry: Gauge::new(
            FENCE_EXPIRY,
            "When the fence lease ends unless the cutover renews it (Unix time; 0 none, +Inf permanent)",
        )?,
        cutover_window: Gauge::new(
            CUTOVER_WINDOW,
            "Write-unavailable window of the cutover (fence to done)",
        )?,
        direction: IntGaugeVec::new(
            Opts::new(DIRECTION, "1 for the way changes flow now"),
            &["direction"],
        )?,
        reverse_lag_seconds: Gauge::new(
            REVERSE_LAG_SECONDS,
            "After the cutover: age of the oldest change on Postgres not yet in SQLite (0 when caught up)",
        )?,
        reverse_lag_changes: IntGauge::new(
            REVERSE_LAG_CHANGES,
            "After the cutover: changes on Postgres not yet in SQLite",
        )?,
        tenant_phase: IntGaugeVec::new(
            Opts::new(
                TENANT_PHASE,
                "1 for the phase each tenant of the fleet is in",
            ),
            &["tenant", "phase"],
        )?,
        tenant_lag: prometheus::GaugeVec::new(
            Opts::new(
                TENANT_LAG_SECONDS,
                "Each tenant's lag, whichever way it streams (0 when caught up)",
            ),
            &["tenant"],
        )?,
        tenant_needs_operator: IntGaugeVec::new(
            Opts::new(
                TENANT_NEEDS_OPERATOR,
                "1 while the tenant's daemon waits for a person",
            ),
            &["tenant"],
        )?,
        fleet_tenants: IntGaugeVec::new(
            Opts::new(
                FLEET_TENANTS,
                "Tenants of the fleet running, paused (file gone) or stopped on an error",
            ),
            &["state"],
        )?,
        fleet_connections: IntGaugeVec::new(
            Opts::new(
                FLEET_CONNECTIONS,
                "The fleet's pool: Postgres connections in use, and connects waiting for one",
            ),
            &["state"],
        )?,
        fleet_session_wait: Histogram::with_opts(
            HistogramOpts::new(
                FLEET_SESSION_WAIT,
                "How long a fleet's tenant with work waited for a session of the pool",
            )
            .buckets(vec![
                0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?,
        tenant_phases: Mutex::default(),
        unhealthy: Mutex::new(None),
        max_lag: Mutex::new(Duration::from_secs(30)),
        registry,
    };
    let build_info = IntGaugeVec::new(Opts::new(BUILD_INFO, "sqlite2pg build"), &["version"])?;
    for state in ["running", "paused", "failed"] {
        m.fleet_tenants.with_label_values(&[state]).set(0);
    }
    for state in ["in_use", "idle", "waiting"] {
        m.fleet_connections.with_label_values(&[state]).set(0);
    }
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    let r = &m.registry;
    r.register(Box::new(build_info))?;
    r.register(Box::new(m.phase.clone()))?;
    r.register(Box::new(m.rows_copied.clone()))?;
    r.register(Box::new(m.rows_total.clone()))?;
    r.register(Box::new(m.applied.clone()))?;
    r.register(Box::new(m.pending.clone()))?;
    r.register(Box::new(m.lag_seconds.clone()))?;
    r.register(Box::new(m.lag_changes.clone()))?;
    r.register(Box::new(m.batch_duration.clone()))?;
    r.register(Box::new(m.batch_changes.clone()))?;
    r.register(Box::new(m.prunes.clone()))?;
    r.register(Box::new(m.pruned.clone()))?;
    r.register(Box::new(m.reconnects.clone()))?;
    r.register(Box::new(m.errors.clone()))?;
    r.register(Box::new(m.position.clone()))?;
    r.register(Box::new(m.cutover_window.clone()))?;
    r.register(Box::new(m.fence_active.clone()))?;
    r.register(Box::new(m.fence_expiry.clone()))?;
    r.register(Box::new(m.needs_operator.clone()))?;
    r.register(Box::new(m.direction.clone()))?;
    r.register(Box::new(m.reverse_lag_seconds.clone()))?;
    r.register(Box::new(m.reverse_lag_changes.clone()))?;
    r.register(Box::new(m.tenant_phase.clone()))?;
    r.register(Box::new(m.tenant_lag.clone()))?;
    r.register(Box::new(m.tenant_needs_operator.clone()))?;
    r.register(Box::new(m.fleet_tenants.clone()))?;
    r.register(Box::new(m.fleet_connections.clone()))?;
    r.register(Box::new(m.fleet_session_wait.clone()))?;
    for d in DIRECTIONS {
        m.direction
            .with_label_values(&[d])
            .set(i64::from(d == "forward"));
    }
    for k in OPERATOR_KINDS {
        m.needs_operator.with_label_values(&[k]).set(0);
    }
    // Series that exist from the start, so dashboards and alerts see zeros, not gaps.
    for p in Phase::ALL {
        m.phase.with_label_values(&[p.as_str()]).set(0);
    }
    for k in [
        "conversion",
        "schema",
        "target_unreachable",
        "source_busy",
        "target",
    ] {
        m.errors.with_label_values(&[k]);
    }
    Ok(m)
}

/// Creates and registers every metric (once); `max_lag` is what /healthz tolerates.
pub fn init(max_lag: Duration) -> Result<()> {
    if METRICS.get().is_none() {
        let m = build()
            .map_err(|e| Error::with_source(ErrorKind::Config, "cannot register the metrics", e))?;
        let _ = METRICS.set(m);
    }
    if let Some(m) = METRICS.get()
        && let Ok(mut l) = m.max_lag.lock()
    {
        *l = max_lag;
    }
    Ok(())
}

fn with(f: impl FnOnce(&Metrics)) {
    if let Some(m) = METRICS.get() {
        f(m);
    }
}

/// The daemon entered `phase`.
pub fn set_phase(phase: Phase) {
    if let Some(t) = tenant() {
        return with(|m| {
            if let Ok(mut phases) = m.tenant_phases.lock() {
                if let Some(old) = phases.insert(t.clone(), phase.as_str()) {
                    let _ = m.tenant_phase.remove_label_values(&[&t, old]);
                }
                m.tenant_phase
                    .with_label_values(&[t.as_str(), phase.as_str()])
                    .set(1);
            }
        });
    }
    with(|m| {
        for p in Phase::ALL {
            m.phase
                .with_label_values(&[p.as_str()])
                .set(i64::from(p == phase));
        }
    });
}

/// A table's snapshot progress.
pub fn snapshot_progress(table: &str, copied: u64, total: u64) {
    with(|m| {
        m.rows_copied.with_label_values(&[table]).set(copied as i64);
        m.rows_total.with_label_values(&[table]).set(total as i64);
    });
}

/// One applied batch.
pub fn batch_applied(per_table: &[(String, u64, u64)], changes: u64, secs: f64, position: i64) {
    with(|m| {
        for (table, upserts, deletes) in per_table {
            m.applied
                .with_label_values(&[table, "upsert"])
                .inc_by(*upserts);
            m.applied
                .with_label_values(&[table, "delete"])
                .inc_by(*deletes);
        }
        m.batch_duration.observe(secs);
        m.batch_changes.observe(changes as f64);
        m.position.set(position);
    });
}

/// Error kinds that make a streaming daemon wait for a person rather than exit.
pub const OPERATOR_KINDS: &[&str] = &["conversion", "schema", "target"];

/// The daemon waits for a person: /healthz answers 503 with `message` (table, key, column and
/// what to do) until [`resumed`].
pub fn needs_operator(kind: &str, message: &str) {
    if let Some(t) = tenant() {
        return needs_operator_for(&t, kind);
    }
    with(|m| {
        for k in OPERATOR_KINDS {
            m.needs_operator
                .with_label_values(&[k])
                .set(i64::from(*k == kind));
        }
        if let Ok(mut u) = m.unhealthy.lock() {
            *u = Some(format!("waiting for a person: {message}"));
        }
    });
}

/// A fleet's tenant waits for a person (its daemon stopped on an error of `kind`).
pub fn needs_operator_for(tenant: &str, kind: &str) {
    with(|m| {
        m.tenant_needs_operator.with_label_values(&[tenant]).set(1);
        m.errors.with_label_values(&[kind]).inc();
    });
}

/// The fleet's daemon: how many tenants run, are paused (file gone) or stopped on an error.
pub fn fleet_tenants(running: usize, paused: usize, failed: usize) {
    with(|m| {
        for (state, n) in [("running", running), ("paused", paused), ("failed", failed)] {
            m.fleet_tenants.with_label_values(&[state]).set(n as i64);
        }
    });
}

/// The fleet's pool: connections open, and connects waiting for one.
pub fn fleet_connections(in_use: usize, idle: usize, waiting: usize) {
    with(|m| {
        for (state, n) in [("in_use", in_use), ("idle", idle), ("waiting", waiting)] {
            m.fleet_connections
                .with_label_values(&[state])
                .set(n as i64);
        }
    });
}

/// A fleet's tenant waited `secs` for a session of the pool.
pub fn fleet_session_wait(secs: f64) {
    with(|m| m.fleet_session_wait.observe(secs));
}

/// A fleet's tenant whose file is gone (paused: phase `stopped`).
pub fn tenant_file_missing(tenant: &str) {
    TENANT.sync_scope(tenant.to_string(), || set_phase(Phase::Stopped));
}

/// Changes apply again: a wait for a person, or an error that stopped applying, is over.
pub fn resumed() {
    if let Some(t) = tenant() {
        return with(|m| {
            if let Ok(g) = m.tenant_needs_operator.get_metric_with_label_values(&[&t]) {
                g.set(0);
            }
        });
    }
    with(|m| {
        for k in OPERATOR_KINDS {
            m.needs_operator.with_label_values(&[k]).set(0);
        }
        if let Ok(mut u) = m.unhealthy.lock()
            && u.as_deref().is_some_and(|r| {
                !r.starts_with("replication lag") && !r.starts_with("Postgres is unreachable")
            })
        {
            *u = None;
        }
    });
}

/// The cutover fence as the file holds it: whether it blocks writes, and until when (Unix
/// seconds; infinite once permanent, 0 when not raised).
pub fn fence(active: bool, expiry_unix: f64) {
    with(|m| {
        m.fence_active.set(i64::from(active));
        m.fence_expiry.set(expiry_unix);
    });
}

/// Replication lag, as measured against the changelog.
pub fn lag(pending: i64, seconds: f64) {
    if let Some(t) = tenant() {
        return with(|m| m.tenant_lag.with_label_values(&[&t]).set(seconds));
    }
    with(|m| {
        m.pending.set(pending);
        m.lag_changes.set(pending);
        m.lag_seconds.set(seconds);
        lag_health(m, seconds, "replication lag");
    });
}

/// /healthz is unhealthy while `seconds` is over `--max-lag-seconds`; a lag reason never
/// hides a stop reason.
fn lag_health(m: &Metrics, seconds: f64, what: &str) {
    let max = m
        .max_lag
        .lock()
        .map(|l| *l)
        .unwrap_or(Duration::from_secs(30));
    let reason = (seconds > max.as_secs_f64()).then(|| {
        format!(
            "{what} {seconds:.1} s is over --max-lag {:.1} s",
            max.as_secs_f64()
        )
    });
    if let Ok(mut u) = m.unhealthy.lock()
        && u.as_deref()
            .is_none_or(|r| r.starts_with("replication lag"))
    {
        *u = reason;
    }
}

/// The reverse stream started: changes flow from Postgres back into SQLite.
pub fn reverse_started() {
    with(|m| {
        for d in DIRECTIONS {
            m.direction
                .with_label_values(&[d])
                .set(i64::from(d == "reverse"));
        }
    });
}

/// The reverse stream's lag; /healthz answers 503 while it is over `--max-lag-seconds`.
pub fn reverse_lag(pending: i64, seconds: f64) {
    if let Some(t) = tenant() {
        return with(|m| m.tenant_lag.with_label_values(&[&t]).set(seconds));
    }
    with(|m| {
        m.reverse_lag_changes.set(pending);
        m.reverse_lag_seconds.set(seconds);
        lag_health(m, seconds, "replication lag (reverse, Postgres to SQLite)");
    });
}

/// A prune of the changelog ran and deleted `rows` (the fleet's tenants' add up).
pub fn pruned(rows: usize) {
    with(|m| {
        m.prunes.inc();
        m.pruned.inc_by(rows as u64);
    });
}

/// Postgres came back after being unreachable: healthy again.
pub fn reconnected() {
    with(|m| {
        m.reconnects.inc();
        if let Ok(mut u) = m.unhealthy.lock()
            && u.as_deref()
                .is_some_and(|r| r.starts_with("Postgres is unreachable"))
        {
            *u = None;
        }
    });
}

/// Postgres cannot be reached: /healthz says so until it is back.
pub fn unreachable(why: &str) {
    with(|m| {
        if let Ok(mut u) = m.unhealthy.lock() {
            *u = Some(format!("Postgres is unreachable: {why}"));
        }
    });
}

/// An error of this kind happened; `stopped` marks the daemon unhealthy with it.
pub fn error(kind: &str, message: Option<&str>) {
    // A fleet's tenant stopping is its own series' news, not the whole daemon's health.
    let message = message.filter(|_| tenant().is_none());
    with(|m| {
        m.errors.with_label_values(&[kind]).inc();
        if let (Some(msg), Ok(mut u)) = (message, m.unhealthy.lock()) {
            *u = Some(msg.to_string());
        }
    });
}

/// The cutover completed with this window.
pub fn cutover(window_secs: f64) {
    with(|m| m.cutover_window.set(window_secs));
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let Some(m) = METRICS.get() else {
        return String::new();
    };
    let mut buf = Vec::new();
    if TextEncoder::new()
        .encode(&m.registry.gather(), &mut buf)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}

fn health() -> (bool, String) {
    match METRICS
        .get()
        .and_then(|m| m.unhealthy.lock().ok().and_then(|u| u.clone()))
    {
        Some(reason) => (false, reason),
        None => (true, "ok".into()),
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until the process ends. axum's server reads
/// requests however a client splits them, and backs off on accept errors (a full file-descriptor
/// table) instead of spinning.
pub async fn serve(addr: &str) -> Result<()> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;

    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::with_source(
            ErrorKind::Config,
            format!("cannot listen on --metrics-addr {addr}"),
            e,
        )
    })?;
    tracing::info!(addr, "serving /metrics and /healthz");
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    render(),
                )
            }),
        )
        .route(
            "/healthz",
            get(|| async {
                let (ok, why) = health();
                let code = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, format!("{why}\n"))
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics or /healthz\n") });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the /metrics and /healthz server stopped");
        }
    });
    Ok(())
}
