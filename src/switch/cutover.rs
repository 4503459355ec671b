//! `cutover`, the switch from SQLite to Postgres: fence SQLite writes, drain the changelog,
//! verify, move sequences, record the write-unavailable window. Any failure before the record
//! lifts the fence: the app keeps running on SQLite.

use std::collections::BTreeSet;

use serde::Serialize;
use tokio_postgres::{Client, Transaction};

use super::{Done, Lease, Options, Side, Step, refuse};
use crate::error::{Error, ErrorKind, Result};
use crate::expr::trigger::Ported;
use crate::model::{Follow, OwnedValue};
use crate::pg::foreign_keys::{self, KeptForeignKey, Orphans};
use crate::pg::{qualified, reverse, sequences, state};
use crate::phase::Phase as RunPhase;
use crate::plan::Plan;
use crate::replicate::stream::{self, End};
use crate::report::status;
use crate::shutdown::Shutdown;
use crate::sqlite::{self, capture};
use crate::verify;
use crate::window::Window;

/// What cutover does about orphans (rows whose foreign key finds no parent; SQLite accepted
/// them because the app left foreign keys off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanPolicy {
    /// Refuse to cut over, listing them (nothing is fenced).
    Refuse,
    /// Cut over; their foreign keys are added NOT VALID and stay so (new rows are checked).
    Keep,
}

/// A foreign key cutover put back, and whether Postgres could validate it.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredForeignKey {
    /// `name on child(cols) -> parent(cols)`.
    pub foreign_key: String,
    /// Validated after writes resumed.
    pub validated: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a cutover did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The stored record.
    pub record: state::Cutover,
    /// Sequences moved.
    pub sequences_moved: usize,
    /// Foreign keys added (NOT VALID) inside the window (shared tables: after it, by the
    /// last tenant streaming into them), to validate once the app writes to Postgres
    /// ([`validate_foreign_keys`]).
    pub foreign_keys: Vec<KeptForeignKey>,
    /// The cutover has no way back ([`crate::replicate::Databases::two_way`]).
    pub one_way: bool,
    /// A fleet's shared tables: how many of their foreign keys stay kept aside (a key holds
    /// for every tenant's rows, and others still stream).
    pub kept_aside: usize,
}

/// The cutover side of the switch.
pub struct Cutover<'a> {
    /// What moves.
    pub plan: &'a Plan,
    /// The shared knobs.
    pub opts: &'a Options,
    /// Verify every row inside the window, not only the rows changed since the last full verify.
    pub full_verify: bool,
    /// What to do with rows whose foreign key finds no parent.
    pub orphans: OrphanPolicy,
}

/// What the checks before the fence found, for the part behind it.
pub struct Ready {
    installed: capture::Installed,
    daemon_running: bool,
    /// Foreign keys kept aside while streaming, added back once cut over.
    kept: Vec<KeptForeignKey>,
    /// The app's triggers, created with the record.
    triggers: Vec<Ported>,
    /// The changelog position the drain reached, for the record.
    newest: i64,
}

/// What `--dry-run` reads.
pub struct Facts {
    status: status::Status,
    verified: Option<i64>,
    kept: usize,
    orphans: Vec<Orphans>,
}

impl Cutover<'_> {
    /// Brings Postgres up to everything the changelog holds now: the running daemon applies
    /// it (waited for up to `limit`), or, with none running, cutover drains it itself.
    /// Returns the changelog position reached.
    async fn catch_up(
        &self,
        client: &Client,
        installed: &capture::Installed,
        daemon_running: bool,
        limit: std::time::Duration,
        stop: &Shutdown,
    ) -> Result<i64> {
        let opts = self.opts;
        let conn = sqlite::open_read_only(&opts.db.source, opts.db.busy_timeout)?;
        let (newest, _, _) = crate::sqlite::changes::pending(&conn, i64::MAX)?;
        drop(conn);
        let applied = async || {
            let again = "Cut over again once it has caught up";
            super::wait_applied(limit, "the last changes", again, async || {
                Ok(state::stream_load(client, &self.opts.db.tenant)
                    .await?
                    .is_some_and(|s| s.position >= newest))
            })
            .await
        };
        if daemon_running {
            applied().await?;
            return Ok(newest);
        }
        let sopts = stream::Options {
            db: opts.db.clone(),
            poll_interval: std::time::Duration::from_millis(50),
            batch_changes: 10_000,
            batch_bytes: 32 << 20,
            until: crate::replicate::Until::CaughtUp {
                give_up_after: Some(std::time::Duration::from_secs(10)),
            },
            link: None,
        };
        match stream::run(self.plan, installed, &sopts, stop.clone(), None).await {
            Ok(End::CaughtUp) => Ok(newest),
            Ok(End::Shutdown) => Err(refuse("interrupted (SIGINT/SIGTERM) while draining")),
            Ok(End::SchemaChanged | End::CutOver) => Err(Error::new(
                ErrorKind::Schema,
                "the SQLite schema changed during cutover; retry",
            )),
            // A daemon started meanwhile and holds the run lock: it applies the changes.
            Err(e)
                if e.kind() == ErrorKind::State
                    && state::daemon_running(client, &self.opts.db.tenant).await? =>
            {
                tracing::info!("a daemon took over the stream: waiting for it to apply");
                applied().await?;
                Ok(newest)
            }
            Err(e) => Err(e),
        }
    }
}

impl Side for Cutover<'_> {
    type Ready = Ready;
    type Fenced = rusqlite::Connection;
    type Facts = Facts;
    type Outcome = Outcome;

    fn what(&self) -> &'static str {
        "cutover"
    }

    fn from(&self) -> &'static str {
        "SQLite"
    }

    fn options(&self) -> &Options {
        self.opts
    }

    async fn abort(&self, client: &mut Client) -> Result<Option<String>> {
        if let Some(c) = state::cutover_load(client, &self.opts.db.tenant).await? {
            return Err(refuse(format!(
                "the cutover is recorded (at {}): Postgres is the database now, and lifting the fence would let the app write to a stale SQLite file. To go back to SQLite without losing the writes made on Postgres: keep `sqlite2pg run` following Postgres back, then `sqlite2pg fallback`",
                c.fenced_at
            )));
        }
        let mut rw = sqlite::open_read_write(&self.opts.db.source, self.opts.db.busy_timeout)?;
        let fence = capture::fence_state(&rw)?;
        capture::unfence(&mut rw)?;
        Ok(fence.filter(|f| f.active).map(|f| f.holder))
    }

    async fn completed(&self, _client: &Client) -> Result<Option<Outcome>> {
        // A recorded cutover needs nothing more: `check` says so.
        Ok(None)
    }

    async fn check(&self, client: &Client) -> Result<()> {
        if let Some(c) = state::cutover_load(client, &self.opts.db.tenant).await? {
            return Err(refuse(format!(
                "this migration was already cut over at {} (window {:.0} ms); Postgres is the database now. To go back to SQLite: `sqlite2pg run` follows Postgres back, then `sqlite2pg fallback`",
                c.fenced_at, c.window_ms
            )));
        }
        let conn = sqlite::open_read_only(&self.opts.db.source, self.opts.db.busy_timeout)?;
        installed(&conn)?;
        Ok(())
    }

    async fn facts(&self, client: &Client) -> Result<Facts> {
        let kept = foreign_keys::kept(client, &self.opts.db.schema).await?;
        Ok(Facts {
            status: status::collect(client, &self.opts.db).await?,
            verified: state::verified_position(client, &self.opts.db.tenant)
                .await
                .ok()
                .flatten(),
            kept: kept.len(),
            // Shared tables' keys are not added by a cutover: their orphans stop nothing.
            orphans: match self.opts.db.shared() {
                false => orphans(client, &kept).await?,
                true => Vec::new(),
            },
        })
    }

    fn describe(&self, step: Step, f: &Facts) -> Vec<String> {
        let tables = self.plan.tables.len();
        match step {
            Step::Prepare => {
                let st = &f.status;
                let mut lines = vec![format!(
                    "wait until lag <= {:.1} s (now {} changes, {:.1} s; daemon {})",
                    self.opts.max_lag.as_secs_f64(),
                    st.lag_changes.unwrap_or(0),
                    st.lag_seconds.unwrap_or(0.0),
                    if st.daemon_running {
                        "running"
                    } else {
                        "not running: cutover drains itself"
                    }
                )];
                if f.verified.is_none() && !self.full_verify {
                    lines.push("(no full verify recorded yet: one runs before the fence)".into());
                }
                for o in &f.orphans {
                    lines.push(format!(
                        "orphans: {} rows of {} find no parent ({}): {}",
                        o.count,
                        o.foreign_key.describe(),
                        match self.orphans {
                            OrphanPolicy::Refuse => "cutover refuses; --orphans keep to go on",
                            OrphanPolicy::Keep => "kept; that key stays NOT VALID",
                        },
                        o.examples.join("; ")
                    ));
                }
                lines
            }
            Step::Fence => vec![format!(
                "fence SQLite writes on {tables} tables (\"{}\")",
                capture::FENCE_MESSAGE
            )],
            Step::Drain => vec!["drain the changelog to Postgres".into()],
            Step::Verify => vec![if self.full_verify {
                "verify every row of every table".into()
            } else {
                format!(
                    "verify the rows changed since the last full verify (position {})",
                    f.verified
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "of the pre-fence verify".into())
                )
            }],
            Step::MoveCounters => vec![format!(
                "move identity/serial sequences past the copied ids on {tables} tables"
            )],
            Step::Record if self.opts.db.shared() => vec![
                "record the cutover and the write-unavailable window; the daemon stops following this tenant".into(),
                format!(
                    "one way (shared tables): no capture on Postgres, so no `fallback`; the {} foreign keys kept aside stay so while another tenant streams into these tables (a key holds for every tenant's rows)",
                    f.kept
                ),
            ],
            Step::Record if !self.opts.db.two_way() => vec![
                format!(
                    "add the {} foreign keys kept aside while streaming, NOT VALID; record the cutover and the write-unavailable window; a running daemon stops following this tenant",
                    f.kept
                ),
                "one way ([fleet] one_way): no capture on Postgres, so no `fallback`".into(),
            ],
            Step::Record => vec![
                format!(
                    "add the {} foreign keys kept aside while streaming, NOT VALID; record the cutover and the write-unavailable window; a running daemon exits by itself",
                    f.kept
                ),
                "and install the capture of the app's writes on Postgres (for the reverse stream and `fallback`)".into(),
            ],
            Step::HandOver if self.opts.db.shared() => {
                vec!["after writes resume: if no other tenant streams into the shared tables, add the foreign keys kept aside, NOT VALID, and validate them".into()]
            }
            Step::HandOver => vec!["after writes resume: validate the foreign keys".into()],
        }
    }

    async fn prepare(&self, client: &mut Client, stop: &Shutdown) -> Result<Ready> {
        let (plan, opts) = (self.plan, self.opts);
        let conn = sqlite::open_read_only(&opts.db.source, opts.db.busy_timeout)?;
        let installed = installed(&conn)?;
        let (shared, two_way) = (opts.db.shared(), opts.db.two_way());
        let (triggers, views) = if !shared {
            (
                crate::plan::triggers::translate(&conn, plan, &opts.db.schema)?,
                crate::plan::views::translate(&conn, plan, &opts.db.schema)?,
            )
        } else {
            // Shared tables carry neither: the app would answer differently for what it
            // relies on, so that refuses before anything is fenced.
            let objects = sqlite::semantics::read(&conn, plan.tables.iter().map(|t| &t.source))?;
            let lost = crate::plan::shared::not_carried(&objects, plan);
            let (errors, warnings): (Vec<_>, Vec<_>) = lost
                .iter()
                .partition(|f| f.severity == crate::plan::Severity::Error);
            for w in warnings {
                tracing::warn!(table = %w.table, "{}", w.message);
            }
            if !errors.is_empty() {
                let mut msg = String::from(
                    "the app relies on what a one-way cutover to shared tables cannot carry; nothing was fenced:",
                );
                for e in &errors {
                    msg.push_str(&format!("\n  {}", e.message));
                }
                msg.push_str(&format!("\n{}", errors[0].hint));
                return Err(refuse(msg));
            }
            (Vec::new(), Vec::new())
        };
        drop(conn);
        let st = status::collect(client, &opts.db).await?;
        if st.phase != RunPhase::Streaming {
            return Err(refuse(format!(
                "the migration is in phase {}: let `sqlite2pg run` finish the snapshot first",
                st.phase
            )));
        }
        for t in &st.gone_from_sqlite {
            tracing::warn!(table = %t, "this table is in Postgres but no longer in SQLite (dropped or renamed there); it is not part of the cutover: drop it in Postgres if the app does not use it");
        }
        let lag = st.lag_changes.unwrap_or(0);
        if !st.daemon_running && lag > 50_000 {
            return Err(refuse(format!(
                "no daemon is running and Postgres is {lag} changes behind: draining that would keep writes fenced for long. Start `sqlite2pg run`, let it catch up, then cut over"
            )));
        }

        // Without a recent full verify, one runs now, before the fence, outside the window:
        // then only the few keys changed since it are verified inside the window.
        let stale = match state::verified_position(client, &self.opts.db.tenant).await? {
            None => true,
            Some(v) => {
                let conn = sqlite::open_read_only(&opts.db.source, opts.db.busy_timeout)?;
                // A table re-synchronized since (a marker, tbl < 0) changed beyond its keys.
                let keys = changed_keys(&conn, v)?;
                keys.len() > 5_000 || keys.iter().any(|(tbl, _)| *tbl < 0)
            }
        };
        if stale && !self.full_verify {
            tracing::info!("no recent full verify: verifying every table before the fence");
            let report = verify::run_and_record(client, plan, &opts.verify(Vec::new())).await?;
            if !report.equal {
                return Err(Error::new(
                    ErrorKind::Schema,
                    "verify found differences before the fence; see `sqlite2pg verify` and fix them first",
                ));
            }
        }
        let reader = &*client;
        super::wait_for_lag("lag", opts.max_lag, opts.wait, async || {
            let st = status::collect(reader, &opts.db).await?;
            Ok((st.lag_seconds.unwrap_or(0.0), st.daemon_running))
        })
        .await?;
        let st = status::collect(client, &opts.db).await?;
        // Orphans are SQLite's (foreign keys off) and Postgres holds the same ones once it has
        // every change made so far (a fix the user just made in SQLite included): counted
        // before the fence, since a constraint that cannot be validated is the user's call.
        self.catch_up(client, &installed, st.daemon_running, opts.wait, stop)
            .await?;
        // Shared tables keep their keys aside: none is added, so orphans change nothing.
        let kept = if !shared {
            foreign_keys::kept(&*client, &opts.db.schema).await?
        } else {
            Vec::new()
        };
        let found = orphans(client, &kept).await?;
        if !found.is_empty() && self.orphans == OrphanPolicy::Refuse {
            let mut msg = String::from(
                "rows whose foreign key finds no parent (SQLite accepted them: the app leaves foreign keys off); nothing was fenced:",
            );
            for o in &found {
                msg.push_str(&format!(
                    "\n  {} rows break {}",
                    o.count,
                    o.foreign_key.describe()
                ));
                for e in &o.examples {
                    msg.push_str(&format!("\n    {e}"));
                }
            }
            msg.push_str("\nDelete them or point them at existing rows in SQLite (the daemon streams the fix), or cut over with --orphans keep: those foreign keys are then added NOT VALID and stay so");
            return Err(refuse(msg));
        }

        // Capture on Postgres goes in now, outside the window: creating triggers waits for the
        // forward stream's open transaction on each table, and sqlite2pg's own writes are not
        // recorded. A refused cutover leaves it in place for the next try (`uninstall`
        // removes it).
        let tables = crate::replicate::reverse_stream::captured(plan);
        let missing = match two_way {
            true => reverse::missing_capture(&*client, &opts.db.schema, &tables).await?,
            false => Vec::new(),
        };
        if !missing.is_empty() {
            let tx = client
                .transaction()
                .await
                .map_err(|e| Error::from_pg("cannot start installing the reverse capture", e))?;
            tx.batch_execute("SET LOCAL lock_timeout = '10s'")
                .await
                .map_err(|e| Error::from_pg("cannot start installing the reverse capture", e))?;
            reverse::install_capture(&tx, &opts.db.tenant, &opts.db.schema, &missing).await?;
            tx.commit()
                .await
                .map_err(|e| Error::from_pg("cannot install the reverse capture", e))?;
            tracing::info!(
                tables = missing.len(),
                "capture installed on Postgres, for a fallback after the cutover"
            );
        }

        create_views(client, opts, views).await?;
        let triggers = triggers_to_create(client, triggers).await?;

        Ok(Ready {
            installed,
            daemon_running: st.daemon_running,
            kept,
            triggers,
            newest: 0,
        })
    }

    async fn lease(&self) -> Result<Lease> {
        Ok(Lease::Sqlite(sqlite::open_read_write(
            &self.opts.db.source,
            self.opts.db.busy_timeout,
        )?))
    }

    async fn fence(
        &self,
        _client: &mut Client,
        ready: &Ready,
        holder: &str,
    ) -> Result<(rusqlite::Connection, Window)> {
        // The window opens as the fence goes up.
        let window = Window::open();
        let mut rw = sqlite::open_read_write(&self.opts.db.source, self.opts.db.busy_timeout)?;
        capture::fence(&mut rw, &ready.installed.tables, holder, self.opts.lease)?;
        Ok((rw, window))
    }

    async fn drain(&self, client: &mut Client, ready: &mut Ready, stop: &Shutdown) -> Result<()> {
        // The running daemon applies the last changes; otherwise drain here.
        ready.newest = self
            .catch_up(
                client,
                &ready.installed,
                ready.daemon_running,
                std::time::Duration::from_secs(60),
                stop,
            )
            .await?;
        Ok(())
    }

    async fn verify(&self, client: &mut Client, ready: &Ready) -> Result<i64> {
        let (plan, opts) = (self.plan, self.opts);
        // The rows changed since the last full verify, or all of them.
        if self.full_verify {
            let report = verify::run(client, plan, &opts.verify(Vec::new())).await?;
            if !report.equal {
                return Err(Error::new(
                    ErrorKind::Schema,
                    "verify found differences after the drain; nothing was switched. See `sqlite2pg verify`",
                ));
            }
            return Ok(report.tables.iter().map(|t| t.rows_compared as i64).sum());
        }
        let verified = state::verified_position(&*client, &self.opts.db.tenant)
            .await?
            .unwrap_or(0);
        let conn = sqlite::open_read_only(&opts.db.source, opts.db.busy_timeout)?;
        let keys = changed_keys(&conn, verified)?;
        let installed = &ready.installed;
        let mut n = verify_keys(client, &conn, plan, &opts.db, installed, &keys).await?;
        // Tables followed by row images have no key to look rows up by: compared in full.
        for (tbl, name) in &installed.tables {
            let Some(t) = plan.tables.iter().find(|t| &t.source.name == name) else {
                continue;
            };
            if t.source.follow() != Follow::ByImage || !keys.iter().any(|(k, _)| k == tbl) {
                continue;
            }
            if let Some(what) =
                verify::check_images(client, t, &opts.verify(vec![name.clone()])).await?
            {
                return Err(Error::new(
                    ErrorKind::Schema,
                    format!("verify after the drain: table {name}: {what}; nothing was switched"),
                ));
            }
            n += 1;
        }
        Ok(n)
    }

    async fn move_counters(&self, tx: &Transaction<'_>) -> Result<usize> {
        let (db, tables) = (&self.opts.db, self.plan.targets());
        // Shared sequences: no other tenant's app takes an id while they move.
        if db.shared() {
            sequences::lock_against_inserts(tx, &db.schema, &tables).await?;
        }
        sequences::move_past_max(tx, &db.schema, &tables, &db.rows).await
    }

    async fn record(
        &self,
        tx: &Transaction<'_>,
        ready: &Ready,
        window: &Window,
        done: Done,
    ) -> Result<()> {
        let (plan, schema) = (self.plan, &self.opts.db.schema);
        if !self.opts.db.shared() {
            // Deferrable keys back to what the migrations made.
            for fk in &foreign_keys::kept(tx, schema).await? {
                foreign_keys::add_not_valid(tx, fk).await?;
            }
        }
        if self.opts.db.two_way() {
            // Capture on Postgres is in place when the record commits (installed before the
            // fence; any table that lost it since gets it here): no write the app makes there
            // escapes the reverse stream, so a fallback loses none.
            let missing = reverse::missing_capture(
                tx,
                schema,
                &crate::replicate::reverse_stream::captured(plan),
            )
            .await?;
            reverse::install_capture(tx, &self.opts.db.tenant, schema, &missing).await?;
            reverse::record_pg_only(tx, schema, &plan.targets()).await?;
        }
        // The app's triggers start with the record: from here on Postgres runs them, SQLite
        // no longer does (and the reverse stream writes SQLite with them off).
        for t in &ready.triggers {
            crate::plan::triggers::create(tx, t).await.map_err(|why| {
                Error::new(
                    ErrorKind::Target,
                    format!(
                        "Postgres refused the app's trigger {} inside the window, though it took it before the fence: {why}; nothing was switched",
                        t.name
                    ),
                )
            })?;
            tracing::info!(trigger = %t.name, "the app's trigger is on Postgres");
        }
        let done_at = window.close();
        state::cutover_record(
            tx,
            &self.opts.db.tenant,
            window.opened_at,
            done_at,
            done.rows_verified,
            ready.newest,
        )
        .await
    }

    async fn make_permanent(
        &self,
        rw: &rusqlite::Connection,
        _tx: &Transaction<'_>,
        holder: &str,
    ) -> Result<bool> {
        capture::make_fence_permanent(rw, holder)
    }

    async fn lift(&self, _client: &mut Client, mut rw: rusqlite::Connection) {
        // Back out: the app keeps running on SQLite.
        match capture::unfence(&mut rw) {
            Ok(_) => tracing::warn!(
                "cutover failed; the fence is lifted and the app can write to SQLite again"
            ),
            Err(u) => {
                tracing::error!(error = %u, "cutover failed AND the fence could not be lifted: run `sqlite2pg uninstall` now")
            }
        }
    }

    async fn hand_over(
        &self,
        client: &Client,
        ready: Ready,
        _window: Window,
        done: Done,
    ) -> Result<Outcome> {
        let record = state::cutover_load(client, &self.opts.db.tenant)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Target, "the cutover record vanished"))?;
        // The figure of the record, as the result line, `status` and the metric give it.
        tracing::info!(window_ms = record.window_ms, "cut over");
        let (foreign_keys, kept_aside) = match self.opts.db.shared() {
            false => (ready.kept, 0),
            true => {
                let added = self.shared_keys_back(client).await;
                let kept = foreign_keys::kept(client, &self.opts.db.schema).await?;
                (added, kept.len())
            }
        };
        Ok(Outcome {
            record,
            sequences_moved: done.moved,
            foreign_keys,
            one_way: !self.opts.db.two_way(),
            kept_aside,
        })
    }

    async fn recorded_anyway(&self, e: Error) -> Result<Outcome> {
        Err(refuse(format!(
            "{e}; but the cutover IS recorded in Postgres: the fence stays. Point the app at Postgres (`sqlite2pg status` shows the record)"
        )))
    }

    async fn recorded(&self) -> Option<bool> {
        let client = crate::pg::connect(&self.opts.db.target).await.ok()?;
        state::cutover_load(&client, &self.opts.db.tenant)
            .await
            .ok()
            .map(|c| c.is_some())
    }

    fn unknown_outcome(&self, e: Error) -> Error {
        refuse(format!(
            "{e}; whether Postgres recorded the cutover is unknown (unreachable), so the fence stays up. Once Postgres answers: `sqlite2pg status` shows a record if it was; otherwise `sqlite2pg cutover --abort` lifts the fence"
        ))
    }
}

impl Cutover<'_> {
    /// A fleet's shared tables take their kept foreign keys back once no tenant streams into
    /// them (this tenant was the last): added NOT VALID, the caller validates them like any
    /// cutover's. A tenant that joins later keeps them aside again for its stream (its
    /// snapshot's `take_over`), and its own cutover, the last again, puts them back. Any
    /// failure here leaves them kept aside, said, and the cutover stands.
    async fn shared_keys_back(&self, client: &Client) -> Vec<KeptForeignKey> {
        let schema = &self.opts.db.schema;
        let back = async {
            client
                .batch_execute("BEGIN; SET LOCAL lock_timeout = '5s'")
                .await
                .map_err(|e| Error::from_pg("cannot start adding the kept foreign keys", e))?;
            // A tenant joining meanwhile takes them aside again only after this commits, or
            // its tables are recorded before this reads (its snapshot's second pass).
            foreign_keys::lock_schema_keys(client, schema).await?;
            let streaming = state::not_cut_over_in(client, schema).await?;
            let kept = foreign_keys::kept(client, schema).await?;
            if !streaming.is_empty() || kept.is_empty() {
                client
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(|e| Error::from_pg("cannot end a read", e))?;
                if !kept.is_empty() {
                    tracing::info!(
                        streaming = streaming.len(),
                        kept = kept.len(),
                        "the shared tables' foreign keys stay kept aside while other tenants stream into them; the last one's cutover adds them"
                    );
                }
                return Ok(Vec::new());
            }
            for fk in &kept {
                foreign_keys::add_not_valid(client, fk).await?;
            }
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| Error::from_pg("cannot commit the kept foreign keys", e))?;
            Ok::<_, Error>(kept)
        };
        match back.await {
            Ok(added) => added,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                tracing::warn!(error = %e, "no tenant streams into the shared tables any more, but their foreign keys could not be added: they stay kept aside in sqlite2pg.foreign_key (the next cutover into these tables tries again)");
                Vec::new()
            }
        }
    }
}

/// Validates the foreign keys the cutover added NOT VALID. It reads every child row but
/// blocks no writer, so it runs after the app is pointed at Postgres; one that rows break
/// stays NOT VALID (new rows are still checked), with the reason.
pub async fn validate_foreign_keys(
    client: &Client,
    added: &[KeptForeignKey],
) -> Vec<RestoredForeignKey> {
    let mut out = Vec::new();
    for fk in added {
        let (validated, reason) = match foreign_keys::validate(client, fk).await {
            Ok(Ok(())) => (true, None),
            Ok(Err(why)) => (false, Some(why)),
            Err(e) => (false, Some(e.to_string())),
        };
        if let Some(why) = &reason {
            tracing::warn!(foreign_key = %fk.describe(), reason = %why, "foreign key stays NOT VALID (new rows are checked)");
        }
        out.push(RestoredForeignKey {
            foreign_key: fk.describe(),
            validated,
            reason,
        });
    }
    out
}

/// Creates the app's views that translate, in the order they read one another, unless one of
/// that name is already on Postgres (the app's migrations made it, or an earlier cutover that
/// was refused later): it is left as it is. Before the fence: a view changes no write.
async fn create_views(
    client: &Client,
    opts: &Options,
    views: Vec<crate::plan::views::ViewPlan>,
) -> Result<()> {
    for v in views {
        let sql = match v.create {
            Ok(sql) => sql,
            Err(why) => {
                tracing::warn!(view = %v.name, reason = %why, "this view is not on Postgres: queries against it fail after the cutover (create it by hand; `sqlite2pg check` lists it)");
                continue;
            }
        };
        let name = qualified(&opts.db.schema, &crate::pg::ddl::truncate_ident(&v.name));
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await
            .map_err(|e| Error::from_pg(format!("cannot look for view {}", v.name), e))?
            .get(0);
        if exists {
            tracing::info!(view = %v.name, "a relation of this name is already on Postgres: left as it is");
            continue;
        }
        match client.batch_execute(&sql).await {
            Ok(()) => tracing::info!(view = %v.name, "view created on Postgres"),
            Err(e) => {
                let why = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                tracing::warn!(view = %v.name, reason = %why, sql = %sql, "Postgres refused this view: queries against it fail after the cutover (create it by hand)");
            }
        }
    }
    Ok(())
}

/// The app's triggers that go on Postgres with the cutover's record: each one ported, not
/// there already, and accepted by Postgres in a trial transaction (rolled back) now, so that
/// inside the window none is refused. The others are named with the reason.
async fn triggers_to_create(
    client: &mut Client,
    triggers: Vec<crate::plan::triggers::TriggerPlan>,
) -> Result<Vec<Ported>> {
    let mut out = Vec::new();
    for t in triggers {
        if t.app_table {
            tracing::warn!(trigger = %t.name, table = %t.table, "the app's trigger fires on a table the app's migrations made on Postgres, and sqlite2pg adds nothing there: unless the migration creates it, what it does stops after the cutover (`sqlite2pg check` shows its port)");
            continue;
        }
        let port = match t.port {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(trigger = %t.name, table = %t.table, reason = %why, "the app's trigger is not ported to Postgres: what it does stops after the cutover (port it by hand; `sqlite2pg check` lists it)");
                continue;
            }
        };
        if crate::plan::triggers::exists(&*client, &port).await? {
            tracing::info!(trigger = %t.name, table = %t.table, "a trigger of this name is on the table in Postgres already: left as it is");
            continue;
        }
        let trial = client
            .transaction()
            .await
            .map_err(|e| Error::from_pg("cannot start trying the app's triggers", e))?;
        trial
            .batch_execute("SET LOCAL lock_timeout = '10s'")
            .await
            .map_err(|e| Error::from_pg("cannot start trying the app's triggers", e))?;
        let tried = crate::plan::triggers::create(&trial, &port).await;
        trial
            .rollback()
            .await
            .map_err(|e| Error::from_pg("cannot end the trial of the app's triggers", e))?;
        match tried {
            Ok(()) => out.push(port),
            Err(why) => {
                tracing::warn!(trigger = %t.name, table = %t.table, reason = %why, sql = %port.function, "Postgres refused the ported trigger: what it does stops after the cutover (port it by hand)");
            }
        }
    }
    Ok(out)
}

/// The capture install in the SQLite file: without one there is nothing to cut over.
fn installed(conn: &rusqlite::Connection) -> Result<capture::Installed> {
    capture::installed(conn)?.ok_or_else(|| {
        refuse(
            "capture is not installed in the SQLite file (was it uninstalled?): run `sqlite2pg run` first, let it snapshot and stream, then cut over",
        )
    })
}

/// The kept foreign keys that rows of their child table break.
async fn orphans(client: &Client, kept: &[KeptForeignKey]) -> Result<Vec<Orphans>> {
    let mut out = Vec::new();
    for fk in kept {
        let o = foreign_keys::orphans(client, fk, 5).await?;
        if o.count > 0 {
            out.push(o);
        }
    }
    Ok(out)
}

/// Distinct (table id, key) pairs in the changelog after `after`.
fn changed_keys(conn: &rusqlite::Connection, after: i64) -> Result<BTreeSet<(i64, Vec<u8>)>> {
    let slots = capture::key_slots(conn)?;
    let mut stmt = conn
        .prepare(&format!(
            "SELECT tbl, {} FROM {} WHERE seq > ?1",
            capture::key_slot_list(slots),
            capture::CHANGES
        ))
        .map_err(|e| Error::from_sqlite("cannot read the changelog", e))?;
    let mut rows = stmt
        .query([after])
        .map_err(|e| Error::from_sqlite("cannot read the changelog", e))?;
    let mut out = BTreeSet::new();
    while let Some(r) = rows
        .next()
        .map_err(|e| Error::from_sqlite("cannot read the changelog", e))?
    {
        let tbl: i64 = r
            .get(0)
            .map_err(|e| Error::from_sqlite("cannot read the changelog", e))?;
        let key: Vec<OwnedValue> = (1..=slots)
            .map(|i| {
                r.get_ref(i)
                    .map(|v| crate::sqlite::reader::to_sql_value(v).to_owned_value())
            })
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| Error::from_sqlite("cannot read the changelog", e))?;
        let bytes = rmp_serde::to_vec(&key).map_err(|e| {
            Error::with_source(ErrorKind::SourceUnreadable, "cannot encode a key", e)
        })?;
        out.insert((tbl, bytes));
    }
    Ok(out)
}

async fn verify_keys(
    client: &Client,
    conn: &rusqlite::Connection,
    plan: &Plan,
    db: &crate::replicate::Databases,
    installed: &capture::Installed,
    keys: &BTreeSet<(i64, Vec<u8>)>,
) -> Result<i64> {
    let mut by_table: std::collections::BTreeMap<i64, Vec<Vec<OwnedValue>>> =
        std::collections::BTreeMap::new();
    for (tbl, bytes) in keys {
        let key: Vec<OwnedValue> = rmp_serde::from_slice(bytes).map_err(|e| {
            Error::with_source(ErrorKind::SourceUnreadable, "cannot decode a key", e)
        })?;
        by_table.entry(*tbl).or_default().push(key);
    }
    let mut n = 0;
    for (tbl, mut keys) in by_table {
        let Some((_, name)) = installed.tables.iter().find(|(id, _)| *id == tbl) else {
            continue;
        };
        let Some(t) = plan.tables.iter().find(|t| &t.source.name == name) else {
            continue;
        };
        let Follow::ByKey(key) = t.source.follow() else {
            continue;
        };
        let width = key.len();
        for k in keys.iter_mut() {
            k.truncate(width);
        }
        if let Some((key, what)) = verify::check_keys(client, conn, t, db, &keys).await? {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "verify after the drain: table {name}, {key} is {what}; nothing was switched"
                ),
            ));
        }
        n += keys.len() as i64;
    }
    Ok(n)
}
