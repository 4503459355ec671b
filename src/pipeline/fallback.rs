//! `fallback`: the cutover mirrored. Fence the app's writes on Postgres (a lease), drain the
//! reverse stream, verify, move SQLite's AUTOINCREMENT counters past the ids Postgres handed
//! out, record the fallback, and hand SQLite back to the app (its file as the app made it:
//! sqlite2pg's triggers, fence and changelog removed). Any failure before the record lifts
//! the Postgres fence: the app keeps running on Postgres.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::plan::Plan;
use super::reverse::{self as stream, Table};
use super::verify;
use crate::config::TargetUrl;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::{reverse, state};
use crate::shutdown::Shutdown;
use crate::sqlite::{self, capture, restore};

/// Knobs of a fallback.
#[derive(Debug, Clone)]
pub struct Options {
    /// The SQLite file.
    pub source: PathBuf,
    /// The Postgres database the app writes to now.
    pub target: TargetUrl,
    /// Target schema.
    pub schema: String,
    /// SQLite busy timeout.
    pub busy_timeout: Duration,
    /// Fence only once the reverse lag is at most this.
    pub max_lag: Duration,
    /// How long to wait for the lag to get there.
    pub wait: Duration,
    /// How long the Postgres fence holds without renewal.
    pub lease: Duration,
    /// How long the fence may wait for the app's open write transactions.
    pub lock_wait: Duration,
}

/// What a fallback did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The stored record.
    pub record: reverse::Fallback,
    /// Whether this run only completed a fallback a killed run had recorded.
    pub completed_earlier: bool,
}

fn refuse(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::State, msg)
}

/// The steps `--dry-run` prints.
pub async fn describe(client: &Client, plan: &Plan, opts: &Options) -> Result<Vec<String>> {
    ready(client).await?;
    // What would refuse the fallback refuses the dry run too.
    no_new_columns(client, plan, &opts.schema).await?;
    no_new_tables(client, plan, opts).await?;
    let (pending, age) = reverse::backlog(client).await?;
    let autoinc = plan
        .tables
        .iter()
        .filter(|t| t.source.autoincrement)
        .count();
    Ok(vec![
        format!(
            "1. verify every row of every table, then wait until the reverse lag <= {:.1} s (now {pending} changes, {:.1} s; daemon {})",
            opts.max_lag.as_secs_f64(),
            age.unwrap_or(0.0),
            if state::daemon_running(client).await? {
                "running"
            } else {
                "not running: fallback drains itself"
            }
        ),
        format!(
            "2. fence Postgres writes on {} tables (\"{}\"), waiting at most {:.1} s for the app's open write transactions",
            plan.tables.len(),
            reverse::FENCE_MESSAGE,
            opts.lock_wait.as_secs_f64()
        ),
        "3. drain the reverse changelog into SQLite".into(),
        "4. verify the rows changed on Postgres since step 1".into(),
        format!("5. move the AUTOINCREMENT counters of {autoinc} tables past the ids Postgres handed out"),
        "6. record the fallback (the Postgres fence stays), remove sqlite2pg's triggers, fence and changelog from the SQLite file, print the window".into(),
    ])
}

/// Refuses unless the migration is cut over, not fallen back, and captured on Postgres.
async fn ready(client: &Client) -> Result<()> {
    if state::cutover_load(client).await?.is_none() {
        return Err(refuse(
            "the migration is not cut over: SQLite is still the database. Before the cutover, going back is stopping `sqlite2pg run` (or `sqlite2pg uninstall`)",
        ));
    }
    if let Some(f) = reverse::fallback_load(client).await? {
        return Err(refuse(format!(
            "this migration already fell back to SQLite at {} (window {:.0} ms). `sqlite2pg uninstall` removes sqlite2pg's objects from Postgres",
            f.done_at, f.window_ms
        )));
    }
    if !reverse::capture_installed(client).await? {
        return Err(refuse(
            "the cutover was made by an sqlite2pg older than 0.3.0, which installed no capture on Postgres: writes made there since cannot be followed back, so a fallback would lose them",
        ));
    }
    Ok(())
}

/// Refuses when a moved table on Postgres has columns the SQLite table lacks (a migration
/// after the cutover added them): a fallback would lose what they hold.
async fn no_new_columns(client: &Client, plan: &Plan, schema: &str) -> Result<()> {
    for t in &plan.tables {
        let rows = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass
                 AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                &[&crate::pg::qualified(schema, &t.target)],
            )
            .await
            .map_err(|e| Error::from_pg(format!("cannot read the columns of {}", t.target), e))?;
        let extra: Vec<String> = rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|c| !t.columns.iter().any(|p| &p.target == c))
            .collect();
        if !extra.is_empty() {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "table {} on Postgres has columns SQLite lacks ({}), added after the cutover? A fallback would lose what they hold; nothing was fenced. Drop them on Postgres first, or stay on Postgres",
                    t.target,
                    extra.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses when Postgres has a table made since the cutover that holds rows (a migration
/// created it, and the app wrote there): no capture follows it, and a fallback would leave
/// its rows behind. Empty ones are named and let be.
async fn no_new_tables(client: &Client, plan: &Plan, opts: &Options) -> Result<()> {
    let mut holding = Vec::new();
    for (name, has_rows) in
        reverse::tables_since_cutover(client, &opts.schema, &plan.targets()).await?
    {
        if has_rows {
            holding.push(name);
        } else {
            tracing::warn!(table = %name, "this table was made on Postgres since the cutover (empty); SQLite will not have it after the fallback");
        }
    }
    if !holding.is_empty() {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "Postgres has tables made since the cutover, with rows ({}): nothing follows them back, so a fallback would leave their rows behind; nothing was fenced. Move what they hold by hand and empty or drop them on Postgres, or stay on Postgres",
                holding.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Lifts a Postgres fence that a fallback left (killed, hung): the app writes to Postgres at
/// once. Refused once the fallback is recorded.
pub async fn abort(client: &mut Client, plan: &Plan, opts: &Options) -> Result<bool> {
    if let Some(f) = reverse::fallback_load(&*client).await? {
        return Err(refuse(format!(
            "the fallback is recorded (at {}): SQLite is the database now, and lifting the fence would let the app write to a stale Postgres",
            f.done_at
        )));
    }
    let was = reverse::fence_state(&*client)
        .await?
        .is_some_and(|f| f.active);
    reverse::unfence(client, &opts.schema, &plan.targets()).await?;
    Ok(was)
}

/// Renews the Postgres fence lease from its own task and connection.
struct LeaseKeeper {
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    fn start(client: Client, opts: &Options, holder: &str) -> LeaseKeeper {
        let (stop, lost) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, l, holder, lease) = (stop.clone(), lost.clone(), holder.to_string(), opts.lease);
        let every = (lease / 5).min(Duration::from_secs(1));
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                tokio::time::sleep(every).await;
                match reverse::renew(&client, &holder, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(
                            "the Postgres fence lease was lost (lifted, or it ran out); this fallback will not be recorded"
                        );
                        l.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not renew the Postgres fence lease yet")
                    }
                }
            }
        });
        LeaseKeeper { stop, lost, task }
    }

    fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.abort();
        let _ = self.task.await;
    }
}

fn drain_opts(opts: &Options) -> stream::Options {
    stream::Options {
        source: opts.source.clone(),
        target: opts.target.clone(),
        schema: opts.schema.clone(),
        busy_timeout: opts.busy_timeout,
        poll_interval: Duration::from_millis(20),
        batch_changes: 5_000,
        until: super::Until::CaughtUp {
            give_up_after: None,
        },
    }
}

/// Brings SQLite up to every change Postgres recorded so far: the running daemon applies
/// them (waited for up to `limit`), or, with none running, the fallback drains itself (and
/// waits for the daemon after all if one took the run lock meanwhile, as one does right after
/// the cutover).
async fn catch_up(client: &Client, plan: &Plan, opts: &Options, limit: Duration) -> Result<()> {
    if !state::daemon_running(client).await? {
        let (_never, token) = Shutdown::new();
        match stream::run(plan, &drain_opts(opts), token).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::State && state::daemon_running(client).await? => {
                tracing::info!("a daemon took over the reverse stream: waiting for it to apply");
            }
            Err(e) => return Err(e),
        }
    }
    let newest = reverse::newest(client).await?;
    let deadline = Instant::now() + limit;
    while !reverse::applied_through(client, newest).await? {
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::State,
                format!(
                    "the daemon did not apply the last changes from Postgres within {:.0} s: it is behind, or stopped on something it waits for a person to fix (`sqlite2pg status` shows its lag and last error); nothing was switched. Fall back again once it has caught up",
                    limit.as_secs_f64()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn verify_opts(opts: &Options, tables: Vec<String>) -> verify::Options {
    verify::Options {
        source: opts.source.clone(),
        schema: opts.schema.clone(),
        busy_timeout: opts.busy_timeout,
        examples: 5,
        tables,
        settle: Duration::from_secs(10),
    }
}

/// Runs the fallback. `interrupt` (SIGINT/SIGTERM) before the record lifts the Postgres fence.
pub async fn run(
    client: &mut Client,
    plan: &Plan,
    opts: &Options,
    interrupt: &Shutdown,
) -> Result<Outcome> {
    if let Some(done) = finish_recorded(client, opts).await? {
        return Ok(done);
    }
    ready(client).await?;
    no_new_columns(client, plan, &opts.schema).await?;
    no_new_tables(client, plan, opts).await?;
    let daemon_running = state::daemon_running(&*client).await?;
    let (pending, _) = reverse::backlog(&*client).await?;
    if !daemon_running && pending > 50_000 {
        return Err(refuse(format!(
            "no daemon is running and SQLite is {pending} changes behind Postgres: draining that would keep writes fenced for long. Start `sqlite2pg run`, let it catch up, then fall back"
        )));
    }
    // Before the fence, outside the window: every row compared, then only the keys applied
    // since this verify began are compared inside the window.
    let Some(ready) = interrupt
        .or_stop(before_fence(client, plan, opts, daemon_running))
        .await
        .transpose()?
    else {
        return Err(refuse(
            "interrupted (SIGINT/SIGTERM) before the fence: nothing was changed, and the app writes to Postgres as before",
        ));
    };
    let tables = plan.targets();
    let holder = super::fence_holder("fallback");
    let fenced = reverse::fence(
        client,
        &opts.schema,
        &tables,
        &holder,
        opts.lease,
        opts.lock_wait,
    )
    .await?;
    let window = fenced.window;
    let (fenced_at, started) = (window.opened_at, window.started());
    tracing::info!(
        waited_ms = fenced.waited.as_secs_f64() * 1000.0,
        "locked the moved tables on Postgres (retried while others held them; the app wrote meanwhile)"
    );
    let mut steps = Steps::new(started);
    steps.mark("fence");
    let Ready {
        since,
        tables: moved,
        keeper_client,
    } = ready;
    let keeper = LeaseKeeper::start(keeper_client, opts, &holder);
    tracing::info!(holder = %holder, "Postgres writes fenced");
    let committing = AtomicBool::new(false);
    let result = {
        let work = behind_fence(
            client,
            plan,
            &moved,
            opts,
            since,
            fenced_at,
            &holder,
            &keeper,
            &committing,
            &mut steps,
        );
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            _ = interrupt.wait() => {
                if committing.load(Ordering::SeqCst) {
                    tracing::warn!("a stop was asked for while the fallback is being recorded: finishing the record first");
                    (&mut work).await
                } else {
                    Err(refuse("interrupted (SIGINT/SIGTERM) before the fallback was recorded: the Postgres fence is lifted and the app writes to Postgres again; nothing was switched"))
                }
            }
        }
    };
    keeper.stop().await;
    match result {
        Ok(()) => {}
        Err(e) if committing.load(Ordering::SeqCst) => {
            // The record's commit failed or its outcome is unknown: whether Postgres has it
            // decides which database the app belongs to.
            let fresh = crate::pg::connect(&opts.target).await.ok();
            let recorded = match &fresh {
                Some(c) => reverse::fallback_load(c).await.ok().map(|r| r.is_some()),
                None => None,
            };
            return match (recorded, fresh) {
                (Some(true), Some(c)) => finish_recorded(&c, opts).await?.ok_or(e),
                (Some(false), _) => {
                    lift_after_failure(client, opts, &tables).await;
                    Err(e)
                }
                _ => Err(unknown_outcome(e)),
            };
        }
        Err(e) => {
            lift_after_failure(client, opts, &tables).await;
            return Err(e);
        }
    }
    // Recorded: SQLite is the database. Hand it back to the app.
    release_sqlite(opts)?;
    let done_at = window.close();
    steps.mark("hand SQLite back");
    reverse::fallback_done(&*client, fenced_at, done_at).await?;
    let record = reverse::fallback_load(&*client)
        .await?
        .ok_or_else(|| Error::new(ErrorKind::Target, "the fallback record vanished"))?;
    // The figure of the record, as the result line and `status` give it.
    tracing::info!(window_ms = record.window_ms, steps = %steps.text(), "fell back");
    Ok(Outcome {
        record,
        completed_earlier: false,
    })
}

fn unknown_outcome(e: Error) -> Error {
    Error::new(
        ErrorKind::State,
        format!(
            "{e}; whether Postgres recorded the fallback is unknown (unreachable), so both fences stay. Once Postgres answers: `sqlite2pg fallback` completes a recorded fallback; otherwise the Postgres fence lapses within the lease (or `sqlite2pg fallback --abort`)"
        ),
    )
}

/// How long each step inside the window took, for the log.
struct Steps {
    last: Instant,
    done: Vec<(&'static str, f64)>,
}

impl Steps {
    fn new(started: Instant) -> Steps {
        Steps {
            last: started,
            done: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        self.done
            .push((step, (now - self.last).as_secs_f64() * 1000.0));
        self.last = now;
    }

    fn text(&self) -> String {
        self.done
            .iter()
            .map(|(s, ms)| format!("{s} {ms:.1} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn lift_after_failure(client: &mut Client, opts: &Options, tables: &[String]) {
    let lifted = match reverse::unfence(client, &opts.schema, tables).await {
        Ok(()) => Ok(()),
        // The failure may have been the connection itself.
        Err(_) => match crate::pg::connect(&opts.target).await {
            Ok(mut c) => reverse::unfence(&mut c, &opts.schema, tables).await,
            Err(e) => Err(e),
        },
    };
    match lifted {
        Ok(()) => tracing::warn!(
            "fallback failed; the Postgres fence is lifted and the app can write to Postgres again"
        ),
        Err(e) => {
            tracing::error!(error = %e, "fallback failed AND the Postgres fence could not be lifted; it lapses by itself within the lease, or run `sqlite2pg fallback --abort`")
        }
    }
}

/// A recorded fallback: SQLite is handed back now if the run that recorded it died first;
/// a rerun of a complete one only reports it.
async fn finish_recorded(client: &Client, opts: &Options) -> Result<Option<Outcome>> {
    let Some(record) = reverse::fallback_load(client).await? else {
        return Ok(None);
    };
    let conn = sqlite::open_read_only(&opts.source, opts.busy_timeout)?;
    let fenced = capture::fenced(&conn)?;
    drop(conn);
    if fenced {
        tracing::warn!(
            "a fallback was recorded but SQLite was not handed back yet (the fallback was killed?): doing it now"
        );
        release_sqlite(opts)?;
    }
    Ok(Some(Outcome {
        record,
        completed_earlier: true,
    }))
}

/// Removes sqlite2pg's objects from the SQLite file: the fence goes with them.
fn release_sqlite(opts: &Options) -> Result<()> {
    let mut rw = sqlite::open_read_write(&opts.source, opts.busy_timeout)?;
    capture::uninstall(&mut rw)?;
    Ok(())
}

/// What the work before the fence prepared for the window.
struct Ready<'a> {
    /// When the last verify before the fence began (Postgres' clock): the window verifies
    /// the keys applied since.
    since: f64,
    /// The moved tables with their column forms.
    tables: Vec<Table<'a>>,
    /// The lease keeper's connection, made before the window opens.
    keeper_client: Client,
}

/// Verifies every row, then waits for the lag; prepares what the window needs.
async fn before_fence<'a>(
    client: &mut Client,
    plan: &'a Plan,
    opts: &Options,
    daemon_running: bool,
) -> Result<Ready<'a>> {
    catch_up(client, plan, opts, opts.wait).await?;
    let since = reverse::clock(&*client).await?;
    let report = verify::run(client, plan, &verify_opts(opts, Vec::new())).await?;
    if !report.equal {
        return Err(Error::new(
            ErrorKind::Schema,
            "verify found differences before the fence; nothing was fenced. See `sqlite2pg verify`",
        ));
    }
    let deadline = Instant::now() + opts.wait;
    loop {
        let (_, age) = reverse::backlog(&*client).await?;
        let lag = age.unwrap_or(0.0);
        if lag <= opts.max_lag.as_secs_f64() || !daemon_running {
            let conn = sqlite::open_read_only(&opts.source, opts.busy_timeout)?;
            let tables = tokio::task::block_in_place(|| stream::tables(plan, &conn))?;
            // The keys changed during the full verify, verified now, once SQLite has every
            // change made so far: inside the window only those changed since this second
            // pass began are left. A difference here may be a change still in flight, so it
            // only keeps every key since the full verify for the window.
            let again = reverse::clock(&*client).await?;
            catch_up(client, plan, opts, opts.wait).await?;
            let since = match verify_changed(client, &tables, opts, since).await {
                Ok(_) => again,
                Err(e) => {
                    tracing::info!(reason = %e, "keys changed during the verify are verified inside the window");
                    since
                }
            };
            let keeper_client = crate::pg::connect(&opts.target).await?;
            return Ok(Ready {
                since,
                tables,
                keeper_client,
            });
        }
        if Instant::now() >= deadline {
            return Err(refuse(format!(
                "the reverse lag stayed at {lag:.1} s (more than --max-lag {:.1} s) for {:.0} s; nothing was fenced. Retry when the daemon has caught up",
                opts.max_lag.as_secs_f64(),
                opts.wait.as_secs_f64()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn behind_fence(
    client: &mut Client,
    plan: &Plan,
    tables: &[Table<'_>],
    opts: &Options,
    since: f64,
    fenced_at: f64,
    holder: &str,
    keeper: &LeaseKeeper,
    committing: &AtomicBool,
    steps: &mut Steps,
) -> Result<()> {
    catch_up(client, plan, opts, Duration::from_secs(60)).await?;
    steps.mark("drain");
    let rows_verified = verify_changed(client, tables, opts, since).await?;
    steps.mark("verify");
    let moved = move_counters(client, plan, opts).await?;
    steps.mark("counters");
    // The record, the permanent fence and the end of capture commit together.
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::from_pg("cannot start the fallback transaction", e))?;
    if keeper.lost() || !reverse::make_permanent(&tx, holder).await? {
        return Err(refuse(
            "the Postgres fence lease ran out or was lifted (`fallback --abort`?) before the fallback was recorded, so the app may have written to Postgres since: nothing was switched; run fallback again",
        ));
    }
    for t in &plan.tables {
        reverse::uncapture(&tx, &opts.schema, &t.target).await?;
    }
    reverse::fallback_record(&tx, fenced_at, super::now_secs(), rows_verified, moved).await?;
    committing.store(true, Ordering::SeqCst);
    tx.commit()
        .await
        .map_err(|e| Error::from_pg("cannot commit the fallback", e))
}

/// Compares the rows of every key applied since `since` (and every table changed as a whole).
async fn verify_changed(
    client: &mut Client,
    tables: &[Table<'_>],
    opts: &Options,
    since: f64,
) -> Result<i64> {
    let changes = reverse::changed_since(&*client, since).await?;
    let mut by_table: BTreeMap<String, (bool, Vec<Vec<String>>)> = BTreeMap::new();
    for c in changes {
        let e = by_table.entry(c.table).or_default();
        match c.key {
            Some(k) => e.1.push(k),
            None => e.0 = true,
        }
    }
    let conn = sqlite::open_read_only(&opts.source, opts.busy_timeout)?;
    let mut n = 0;
    for (name, (whole, mut keys)) in by_table {
        let Some(t) = tables.iter().find(|t| t.plan().target == name) else {
            continue;
        };
        let p = t.plan();
        if whole || !t.has_key() {
            if let Some(what) = verify_table(client, opts, &p.source.name, t).await? {
                return Err(Error::new(
                    ErrorKind::Schema,
                    format!(
                        "verify after the drain: table {}: {what}; nothing was switched",
                        p.source.name
                    ),
                ));
            }
            n += 1;
            continue;
        }
        keys.sort();
        keys.dedup();
        let sqlite_keys = stream::sqlite_keys(&*client, &opts.schema, t, &keys).await?;
        if let Some((key, what)) =
            verify::check_keys(client, &conn, p, &opts.schema, &sqlite_keys).await?
        {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "verify after the drain: table {}, {key} is {what}; nothing was switched",
                    p.source.name
                ),
            ));
        }
        n += keys.len() as i64;
    }
    Ok(n)
}

/// Compares one whole table; `Some(what)` when it differs.
async fn verify_table(
    client: &mut Client,
    opts: &Options,
    name: &str,
    t: &Table<'_>,
) -> Result<Option<String>> {
    if t.plan().source.follows_row_images() {
        return verify::check_images(client, t.plan(), &verify_opts(opts, vec![name.to_string()]))
            .await;
    }
    let plan = Plan {
        tables: vec![t.plan().clone()],
        skipped: Vec::new(),
        findings: Vec::new(),
        target_only: Vec::new(),
        source_shape: Vec::new(),
    };
    let report = verify::run(client, &plan, &verify_opts(opts, Vec::new())).await?;
    Ok((!report.equal).then(|| "its rows differ (see `sqlite2pg verify`)".to_string()))
}

/// Moves each AUTOINCREMENT counter past the largest id its Postgres sequence handed out, so
/// the app's next insert on SQLite never reuses an id Postgres gave (and maybe deleted).
async fn move_counters(client: &Client, plan: &Plan, opts: &Options) -> Result<i32> {
    let mut targets = Vec::new();
    for t in plan.tables.iter().filter(|t| t.source.autoincrement) {
        let Some(alias) = t.source.rowid_alias else {
            continue;
        };
        let source_col = &t.source.columns[alias].name;
        let Some(c) = t.columns.iter().find(|c| &c.source == source_col) else {
            continue;
        };
        for (col, last) in reverse::sequence_values(client, &opts.schema, &t.target).await? {
            if col == c.target {
                targets.push((t.source.name.clone(), last));
            }
        }
    }
    if targets.is_empty() {
        return Ok(0);
    }
    tokio::task::block_in_place(|| {
        let conn = restore::open(&opts.source, opts.busy_timeout)?;
        let mut moved = 0;
        for (table, last) in &targets {
            if restore::move_autoincrement(&conn, table, *last)? {
                moved += 1;
            }
        }
        Ok(moved)
    })
}
