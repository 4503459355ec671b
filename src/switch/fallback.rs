//! `fallback`, the switch from Postgres back to SQLite: the cutover mirrored. Fence the app's
//! writes on Postgres (a lease), drain the reverse stream, verify, move SQLite's AUTOINCREMENT
//! counters past the ids Postgres handed out, record the fallback, and hand SQLite back to the
//! app (its file as the app made it: sqlite2pg's triggers, fence and changelog removed). Any
//! failure before the record lifts the Postgres fence: the app keeps running on Postgres.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::{Client, Transaction};

use super::{Done, Lease, Options, Side, Step, refuse};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::{reverse, state};
use crate::plan::Plan;
use crate::replicate::reverse_stream::{self, Table};
use crate::shutdown::Shutdown;
use crate::sqlite::{self, capture, restore};
use crate::verify;
use crate::window::Window;

/// What a fallback did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The stored record.
    pub record: reverse::Fallback,
    /// Whether this run only completed a fallback a killed run had recorded.
    pub completed_earlier: bool,
}

/// The fallback side of the switch.
pub struct Fallback<'a> {
    /// What moved.
    pub plan: &'a Plan,
    /// The shared knobs.
    pub opts: &'a Options,
    /// How long the fence may wait for the app's open write transactions.
    pub lock_wait: Duration,
}

/// What the work before the fence prepared for the window.
pub struct Ready<'a> {
    /// When the last verify before the fence began (Postgres' clock): the window verifies
    /// the keys applied since.
    since: f64,
    /// The moved tables with their column forms.
    tables: Vec<Table<'a>>,
}

/// What `--dry-run` reads.
pub struct Facts {
    pending: i64,
    age: Option<f64>,
    daemon_running: bool,
}

impl<'a> Fallback<'a> {
    fn drain_opts(&self) -> reverse_stream::Options {
        let opts = self.opts;
        reverse_stream::Options {
            db: opts.db.clone(),
            poll_interval: Duration::from_millis(20),
            batch_changes: 5_000,
            until: crate::replicate::Until::CaughtUp {
                give_up_after: None,
            },
            link: None,
        }
    }

    /// Brings SQLite up to every change Postgres recorded so far: the running daemon applies
    /// them (waited for up to `limit`), or, with none running, the fallback drains itself (and
    /// waits for the daemon after all if one took the run lock meanwhile, as one does right
    /// after the cutover).
    async fn catch_up(&self, client: &Client, limit: Duration, stop: &Shutdown) -> Result<()> {
        if !state::daemon_running(client, &self.opts.db.tenant).await? {
            match reverse_stream::run(self.plan, &self.drain_opts(), stop.clone()).await {
                Ok(reverse_stream::End::Shutdown) => {
                    return Err(refuse("interrupted (SIGINT/SIGTERM) while draining"));
                }
                Ok(_) => return Ok(()),
                Err(e)
                    if e.kind() == ErrorKind::State
                        && state::daemon_running(client, &self.opts.db.tenant).await? =>
                {
                    tracing::info!(
                        "a daemon took over the reverse stream: waiting for it to apply"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let newest = reverse::newest(client, &self.opts.db.tenant).await?;
        let again = "Fall back again once it has caught up";
        super::wait_applied(limit, "the last changes from Postgres", again, async || {
            reverse::applied_through(client, &self.opts.db.tenant, newest).await
        })
        .await
    }

    /// A recorded fallback: SQLite is handed back now if the run that recorded it died
    /// first; a rerun of a complete one only reports it.
    async fn finish_recorded(&self, client: &Client) -> Result<Option<Outcome>> {
        let Some(record) = reverse::fallback_load(client, &self.opts.db.tenant).await? else {
            return Ok(None);
        };
        let conn = sqlite::open_read_only(&self.opts.db.source, self.opts.db.busy_timeout)?;
        let fenced = capture::fenced(&conn)?;
        drop(conn);
        if fenced {
            tracing::warn!(
                "a fallback was recorded but SQLite was not handed back yet (the fallback was killed?): doing it now"
            );
            self.release_sqlite()?;
        }
        Ok(Some(Outcome {
            record,
            completed_earlier: true,
        }))
    }

    /// Removes sqlite2pg's objects from the SQLite file: the fence goes with them.
    fn release_sqlite(&self) -> Result<()> {
        let mut rw = sqlite::open_read_write(&self.opts.db.source, self.opts.db.busy_timeout)?;
        capture::uninstall(&mut rw)?;
        Ok(())
    }
}

impl<'a> Side for Fallback<'a> {
    type Ready = Ready<'a>;
    type Fenced = ();
    type Facts = Facts;
    type Outcome = Outcome;

    fn what(&self) -> &'static str {
        "fallback"
    }

    fn from(&self) -> &'static str {
        "Postgres"
    }

    fn options(&self) -> &Options {
        self.opts
    }

    async fn abort(&self, client: &mut Client) -> Result<Option<String>> {
        if let Some(f) = reverse::fallback_load(&*client, &self.opts.db.tenant).await? {
            return Err(refuse(format!(
                "the fallback is recorded (at {}): SQLite is the database now, and lifting the fence would let the app write to a stale Postgres",
                f.done_at
            )));
        }
        let was = reverse::fence_state(&*client, &self.opts.db.tenant)
            .await?
            .filter(|f| f.active);
        reverse::unfence(
            client,
            &self.opts.db.tenant,
            &self.opts.db.schema,
            &self.plan.targets(),
        )
        .await?;
        Ok(was.map(|f| f.holder))
    }

    async fn completed(&self, client: &Client) -> Result<Option<Outcome>> {
        self.finish_recorded(client).await
    }

    async fn check(&self, client: &Client) -> Result<()> {
        ready(client, &self.opts.db).await?;
        no_new_columns(client, self.plan, &self.opts.db.schema).await?;
        no_new_tables(client, self.plan, self.opts).await
    }

    async fn facts(&self, client: &Client) -> Result<Facts> {
        let (pending, age) = reverse::backlog(client, &self.opts.db.tenant).await?;
        Ok(Facts {
            pending,
            age,
            daemon_running: state::daemon_running(client, &self.opts.db.tenant).await?,
        })
    }

    fn describe(&self, step: Step, f: &Facts) -> Vec<String> {
        let tables = self.plan.tables.len();
        match step {
            Step::Prepare => vec![format!(
                "verify every row of every table, then wait until the reverse lag <= {:.1} s (now {} changes, {:.1} s; daemon {})",
                self.opts.max_lag.as_secs_f64(),
                f.pending,
                f.age.unwrap_or(0.0),
                if f.daemon_running {
                    "running"
                } else {
                    "not running: fallback drains itself"
                }
            )],
            Step::Fence => vec![format!(
                "fence Postgres writes on {tables} tables (\"{}\"), waiting at most {:.1} s for the app's open write transactions",
                reverse::FENCE_MESSAGE,
                self.lock_wait.as_secs_f64()
            )],
            Step::Drain => vec!["drain the reverse changelog into SQLite".into()],
            Step::Verify => vec!["verify the rows changed on Postgres since step 1".into()],
            Step::MoveCounters => {
                let autoinc = self
                    .plan
                    .tables
                    .iter()
                    .filter(|t| t.source.autoincrement)
                    .count();
                vec![format!(
                    "move the AUTOINCREMENT counters of {autoinc} tables past the ids Postgres handed out"
                )]
            }
            Step::Record => vec!["record the fallback (the Postgres fence stays)".into()],
            Step::HandOver => vec![
                "remove sqlite2pg's triggers, fence and changelog from the SQLite file, print the window".into(),
            ],
        }
    }

    async fn prepare(&self, client: &mut Client, stop: &Shutdown) -> Result<Ready<'a>> {
        let (plan, opts) = (self.plan, self.opts);
        let daemon_running = state::daemon_running(&*client, &self.opts.db.tenant).await?;
        let (pending, _) = reverse::backlog(&*client, &self.opts.db.tenant).await?;
        if !daemon_running && pending > 50_000 {
            return Err(refuse(format!(
                "no daemon is running and SQLite is {pending} changes behind Postgres: draining that would keep writes fenced for long. Start `sqlite2pg run`, let it catch up, then fall back"
            )));
        }
        // Every row compared before the fence, outside the window; then only the keys applied
        // since this verify began are compared inside the window.
        self.catch_up(client, opts.wait, stop).await?;
        let since = reverse::clock(&*client).await?;
        let report = verify::run(client, plan, &opts.verify(Vec::new())).await?;
        if !report.equal {
            return Err(Error::new(
                ErrorKind::Schema,
                "verify found differences before the fence; nothing was fenced. See `sqlite2pg verify`",
            ));
        }
        let reader = &*client;
        super::wait_for_lag("reverse lag", opts.max_lag, opts.wait, async || {
            let (_, age) = reverse::backlog(reader, &opts.db.tenant).await?;
            Ok((age.unwrap_or(0.0), daemon_running))
        })
        .await?;
        let conn = sqlite::open_read_only(&opts.db.source, opts.db.busy_timeout)?;
        let tables = tokio::task::block_in_place(|| reverse_stream::tables(plan, &conn))?;
        // The keys changed during the full verify, verified now, once SQLite has every change
        // made so far: inside the window only those changed since this second pass began are
        // left. A difference here may be a change still in flight, so it only keeps every key
        // since the full verify for the window.
        let again = reverse::clock(&*client).await?;
        self.catch_up(client, opts.wait, stop).await?;
        let since = match verify_changed(client, &tables, opts, since).await {
            Ok(_) => again,
            Err(e) => {
                tracing::info!(reason = %e, "keys changed during the verify are verified inside the window");
                since
            }
        };
        Ok(Ready { since, tables })
    }

    async fn lease(&self) -> Result<Lease> {
        Ok(Lease::Postgres(
            crate::pg::connect(&self.opts.db.target).await?,
            self.opts.db.tenant.clone(),
        ))
    }

    async fn fence(
        &self,
        client: &mut Client,
        _ready: &Ready<'a>,
        holder: &str,
    ) -> Result<((), Window)> {
        let opts = self.opts;
        let fenced = reverse::fence(
            client,
            &opts.db.tenant,
            &opts.db.schema,
            &self.plan.targets(),
            holder,
            opts.lease,
            self.lock_wait,
        )
        .await?;
        tracing::info!(
            waited_ms = fenced.waited.as_secs_f64() * 1000.0,
            "locked the moved tables on Postgres (retried while others held them; the app wrote meanwhile)"
        );
        Ok(((), fenced.window))
    }

    async fn drain(
        &self,
        client: &mut Client,
        _ready: &mut Ready<'a>,
        stop: &Shutdown,
    ) -> Result<()> {
        self.catch_up(client, Duration::from_secs(60), stop).await
    }

    async fn verify(&self, client: &mut Client, ready: &Ready<'a>) -> Result<i64> {
        verify_changed(client, &ready.tables, self.opts, ready.since).await
    }

    async fn move_counters(&self, tx: &Transaction<'_>) -> Result<usize> {
        move_counters(tx, self.plan, self.opts).await
    }

    async fn record(
        &self,
        tx: &Transaction<'_>,
        _ready: &Ready<'a>,
        window: &Window,
        done: Done,
    ) -> Result<()> {
        // The record, the permanent fence and the end of capture commit together.
        for t in &self.plan.tables {
            reverse::uncapture(tx, &self.opts.db.schema, &t.target).await?;
        }
        let moved = i32::try_from(done.moved).unwrap_or(i32::MAX);
        reverse::fallback_record(
            tx,
            &self.opts.db.tenant,
            window.opened_at,
            crate::window::now_secs(),
            done.rows_verified,
            moved,
        )
        .await
    }

    async fn make_permanent(
        &self,
        _fenced: &(),
        tx: &Transaction<'_>,
        holder: &str,
    ) -> Result<bool> {
        reverse::make_permanent(tx, &self.opts.db.tenant, holder).await
    }

    async fn lift(&self, client: &mut Client, _fenced: ()) {
        let (schema, tables) = (&self.opts.db.schema, self.plan.targets());
        let lifted = match reverse::unfence(client, &self.opts.db.tenant, schema, &tables).await {
            Ok(()) => Ok(()),
            // The failure may have been the connection itself.
            Err(_) => match crate::pg::connect(&self.opts.db.target).await {
                Ok(mut c) => reverse::unfence(&mut c, &self.opts.db.tenant, schema, &tables).await,
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

    async fn hand_over(
        &self,
        client: &Client,
        _ready: Ready<'a>,
        window: Window,
        _done: Done,
    ) -> Result<Outcome> {
        // Recorded: SQLite is the database. Hand it back to the app.
        self.release_sqlite()?;
        let done_at = window.close();
        reverse::fallback_done(client, &self.opts.db.tenant, window.opened_at, done_at).await?;
        let record = reverse::fallback_load(client, &self.opts.db.tenant)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Target, "the fallback record vanished"))?;
        // The figure of the record, as the result line and `status` give it.
        tracing::info!(window_ms = record.window_ms, "fell back");
        Ok(Outcome {
            record,
            completed_earlier: false,
        })
    }

    async fn recorded_anyway(&self, e: Error) -> Result<Outcome> {
        match crate::pg::connect(&self.opts.db.target).await {
            Ok(client) => self.finish_recorded(&client).await?.ok_or(e),
            Err(_) => Err(self.unknown_outcome(e)),
        }
    }

    async fn recorded(&self) -> Option<bool> {
        let client = crate::pg::connect(&self.opts.db.target).await.ok()?;
        reverse::fallback_load(&client, &self.opts.db.tenant)
            .await
            .ok()
            .map(|r| r.is_some())
    }

    fn unknown_outcome(&self, e: Error) -> Error {
        refuse(format!(
            "{e}; whether Postgres recorded the fallback is unknown (unreachable), so both fences stay. Once Postgres answers: `sqlite2pg fallback` completes a recorded fallback; otherwise the Postgres fence lapses within the lease (or `sqlite2pg fallback --abort`)"
        ))
    }
}

/// Refuses unless the migration is cut over, not fallen back, and captured on Postgres.
async fn ready(client: &Client, db: &crate::replicate::Databases) -> Result<()> {
    if state::cutover_load(client, &db.tenant).await?.is_none() {
        return Err(refuse(
            "the migration is not cut over: SQLite is still the database. Before the cutover, going back is stopping `sqlite2pg run` (or `sqlite2pg uninstall`)",
        ));
    }
    if let Some(f) = reverse::fallback_load(client, &db.tenant).await? {
        return Err(refuse(format!(
            "this migration already fell back to SQLite at {} (window {:.0} ms). `sqlite2pg uninstall` removes sqlite2pg's objects from Postgres",
            f.done_at, f.window_ms
        )));
    }
    if !reverse::capture_installed(client, &db.schema).await? {
        return Err(refuse(
            "the cutover installed no capture on Postgres (it was one way: [fleet] one_way = true when it ran; or an sqlite2pg older than 0.3.0 made it): writes made there since cannot be followed back, so a fallback would lose them",
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
        reverse::tables_since_cutover(client, &opts.db.schema, &plan.targets()).await?
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

/// Compares the rows of every key applied since `since` (and every table changed as a whole).
async fn verify_changed(
    client: &mut Client,
    tables: &[Table<'_>],
    opts: &Options,
    since: f64,
) -> Result<i64> {
    let changes = reverse::changed_since(&*client, &opts.db.tenant, since).await?;
    let mut by_table: BTreeMap<String, (bool, Vec<Vec<String>>)> = BTreeMap::new();
    for c in changes {
        let e = by_table.entry(c.table).or_default();
        match c.key {
            Some(k) => e.1.push(k),
            None => e.0 = true,
        }
    }
    let conn = sqlite::open_read_only(&opts.db.source, opts.db.busy_timeout)?;
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
        let sqlite_keys = reverse_stream::sqlite_keys(&*client, &opts.db.schema, t, &keys).await?;
        if let Some((key, what)) =
            verify::check_keys(client, &conn, p, &opts.db, &sqlite_keys).await?
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
    if t.plan().source.follow() == crate::model::Follow::ByImage {
        return verify::check_images(client, t.plan(), &opts.verify(vec![name.to_string()])).await;
    }
    let plan = Plan::single(t.plan().clone());
    let report = verify::run(client, &plan, &opts.verify(Vec::new())).await?;
    Ok((!report.equal).then(|| "its rows differ (see `sqlite2pg verify`)".to_string()))
}

/// Moves each AUTOINCREMENT counter past the largest id its Postgres sequence handed out, so
/// the app's next insert on SQLite never reuses an id Postgres gave (and maybe deleted).
async fn move_counters(
    client: &impl tokio_postgres::GenericClient,
    plan: &Plan,
    opts: &Options,
) -> Result<usize> {
    let mut targets = Vec::new();
    for t in plan.tables.iter().filter(|t| t.source.autoincrement) {
        let Some(alias) = t.source.rowid_alias else {
            continue;
        };
        let source_col = &t.source.columns[alias].name;
        let Some(c) = t.columns.iter().find(|c| &c.source == source_col) else {
            continue;
        };
        for (col, last) in reverse::sequence_values(client, &opts.db.schema, &t.target).await? {
            if col == c.target {
                targets.push((t.source.name.clone(), last));
            }
        }
    }
    if targets.is_empty() {
        return Ok(0);
    }
    tokio::task::block_in_place(|| {
        let conn = restore::open(&opts.db.source, opts.db.busy_timeout)?;
        let mut moved = 0;
        for (table, last) in &targets {
            if restore::move_autoincrement(&conn, table, *last)? {
                moved += 1;
            }
        }
        Ok(moved)
    })
}
