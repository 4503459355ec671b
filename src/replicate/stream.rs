//! The stream: after the snapshot, tail the changelog and apply each range's current row
//! states to Postgres, position in the same transaction; prune behind durable applies.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::follower::{Applied, Connected, Direction, Ended, Follower};
use crate::error::{Error, ErrorKind, Result, RetryPolicy};
use crate::model::{Follow, OwnedValue, display_key};
use crate::pg::apply::{self, Applier, TableBatch};
use crate::pg::{self, convert, copy, state};
use crate::phase::Phase;
use crate::plan::{Plan, TablePlan};
use crate::shutdown::Shutdown;
use crate::sqlite::capture::{self, Installed};
use crate::sqlite::changes::{self, Batch, RowReader};
use crate::sqlite::{self, watch as file_watch};

/// Knobs of the stream.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the two databases are.
    pub db: super::Databases,
    /// Fallback poll when no file notification arrives.
    pub poll_interval: Duration,
    /// Most changelog rows per SQLite read (one chunk of a drain).
    pub batch_changes: usize,
    /// Most bytes of row data per SQLite read.
    pub batch_bytes: usize,
    /// The daemon's stream, or a cutover's drain (`End::CaughtUp` once the changelog is).
    pub until: super::Until,
    /// Run by a fleet's daemon: woken by it, holding a connection only while there is work.
    pub link: Option<super::FleetLink>,
}

/// One captured table: how it is followed, a key given by its positions among the plan's
/// columns.
struct Captured {
    plan_index: usize,
    follow: Follow,
}

/// Julian day of 1970-01-01 00:00 UTC.
const UNIX_EPOCH_JULIAN: f64 = 2_440_587.5;

/// Seconds since the Unix epoch of a julian day number.
pub fn julian_to_unix(jd: f64) -> f64 {
    (jd - UNIX_EPOCH_JULIAN) * 86_400.0
}

/// Checks that the target's stream belongs to this capture install and records where the
/// stream starts, before the snapshot reads anything: every change after that point is in the
/// changelog, and re-reading a key the snapshot already copied is harmless.
/// Also creates the state schema, takes the run lock (held as long as `client` lives) and
/// keeps the `--cast`s the rows are written with, for every later command. Another session
/// holding the lock for 5 s is another run.
pub async fn prepare(
    client: &tokio_postgres::Client,
    tenant: &str,
    installed: &Installed,
    casts: &[crate::config::Cast],
    source: &std::path::Path,
    busy: Duration,
) -> Result<()> {
    state::ensure(client).await?;
    state::register(client, tenant).await?;
    // Before any row is written; kept once (the plan already held a command to the kept ones).
    state::record_setting(client, tenant, state::CASTS, &casts).await?;
    // The previous pass's session (before a re-plan) may hold it a moment longer.
    if !state::lock_within(client, tenant, Duration::from_secs(5)).await? {
        return Err(Error::new(
            ErrorKind::Config,
            if tenant.is_empty() {
                "another sqlite2pg run is working on this Postgres database; stop it first (`sqlite2pg status` shows its position)".to_string()
            } else {
                format!(
                    "another sqlite2pg run is working on tenant {tenant} in this Postgres database; stop it first (`sqlite2pg status --tenant {tenant}` shows its position)"
                )
            },
        ));
    }
    match state::stream_load(client, tenant).await? {
        Some(st) if st.install_id != installed.install_id => Err(Error::new(
            ErrorKind::Schema,
            "the SQLite capture was reinstalled since this target was filled (an uninstall, or a restored backup of the SQLite file), so changes in between were never recorded. Start over: drop the copied tables and the sqlite2pg schema in Postgres, then run again",
        )),
        Some(_) => Ok(()),
        None => {
            let copied: i64 = client
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {}.table_state WHERE tenant = $1",
                        state::STATE_SCHEMA
                    ),
                    &[&tenant],
                )
                .await
                .map_err(|e| Error::from_pg("cannot read snapshot progress", e))?
                .get(0);
            if copied > 0 {
                return Err(Error::new(
                    ErrorKind::Schema,
                    "this target holds a snapshot taken before capture was installed; the changes since are unknown. Start over: drop the copied tables and the sqlite2pg schema in Postgres, then run again",
                ));
            }
            let conn = sqlite::open_read_only_now(source, busy)?;
            let (newest, _, _) = sqlite::read_now(&conn, busy, |c| changes::pending(c, i64::MAX))?;
            state::stream_init(client, tenant, &installed.install_id, newest).await
        }
    }
}

/// Measures the lag against the changelog, and reads the fence, for the metrics (best effort:
/// a busy file skips it).
fn report_lag(reader: &rusqlite::Connection, busy: Duration, position: i64) {
    if let Ok(f) = sqlite::read_now(reader, busy, capture::fence_state) {
        capture::report_fence(f.as_ref());
    }
    if let Ok((_, pending, oldest)) =
        sqlite::read_now(reader, busy, |r| changes::pending(r, position))
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let secs = oldest
            .map(|at| (now - julian_to_unix(at)).max(0.0))
            .unwrap_or(0.0);
        crate::metrics::lag(pending, secs);
    }
}

fn conversion_error(
    t: &TablePlan,
    key: &[OwnedValue],
    column: &str,
    value: &OwnedValue,
    e: convert::ConvError,
) -> Error {
    Error::new(
        ErrorKind::Conversion,
        format!(
            "table {}, row {}, column {}: value {} cannot be applied: {}. The position is kept; fix the value in SQLite (or --cast the column) and the daemon resumes there",
            t.source.name,
            display_key(&t.key_names, key),
            column,
            value.as_ref().display(),
            e.detail
        ),
    )
}

fn encode_batch(
    plan: &Plan,
    captured: &BTreeMap<i64, Captured>,
    handoff: &state::ImageHandoff,
    batch: Batch,
    chunk: i32,
) -> Result<Vec<TableBatch>> {
    let mut out = Vec::new();
    for (tbl, changes) in batch.tables {
        let Some(cap) = captured.get(&tbl) else {
            continue;
        };
        let t = &plan.tables[cap.plan_index];
        let mut b = table_batch(t, cap);
        match &cap.follow {
            Follow::ByImage => {
                for img in &changes.images {
                    if handoff.already_copied(&t.source.name, img.seq, img.rowid) {
                        continue;
                    }
                    copy::begin_row(&mut b.upserts, t.columns.len() + 1);
                    for (c, v) in t.columns.iter().zip(&img.values) {
                        convert::encode(v.as_ref(), &c.conv, &mut b.upserts).map_err(|e| {
                            conversion_error(t, &[OwnedValue::Integer(img.rowid)], &c.source, v, e)
                        })?;
                    }
                    apply::put_int4(&mut b.upserts, img.sign);
                    b.row_keys.push(vec![OwnedValue::Integer(img.rowid)]);
                    b.n_upserts += 1;
                }
            }
            Follow::ByKey(key_positions) => {
                b.n_upserts = changes.present.len() as u64;
                b.n_deletes = changes.absent.len() as u64;
                for (key, row) in changes.present {
                    copy::begin_row(&mut b.upserts, t.columns.len() + 1);
                    for (c, v) in t.columns.iter().zip(&row) {
                        convert::encode(v.as_ref(), &c.conv, &mut b.upserts)
                            .map_err(|e| conversion_error(t, &key, &c.source, v, e))?;
                    }
                    apply::put_int4(&mut b.upserts, chunk);
                    b.row_keys.push(key);
                }
                for key in &changes.absent {
                    copy::begin_row(&mut b.deletes, key.len() + 1);
                    for (pos, v) in key_positions.iter().zip(key) {
                        let c = &t.columns[*pos];
                        convert::encode(v.as_ref(), &c.conv, &mut b.deletes)
                            .map_err(|e| conversion_error(t, key, &c.source, v, e))?;
                    }
                    apply::put_int4(&mut b.deletes, chunk);
                }
            }
        }
        out.push(b);
    }
    Ok(out)
}

/// An empty part of a chunk for one captured table.
fn table_batch(t: &TablePlan, cap: &Captured) -> TableBatch {
    TableBatch {
        index: cap.plan_index,
        table: t.target.clone(),
        columns: t.target_columns(),
        keys: match &cap.follow {
            Follow::ByKey(positions) => positions
                .iter()
                .map(|p| t.columns[*p].target.clone())
                .collect(),
            Follow::ByImage => Vec::new(),
        },
        upserts: copy::begin_buffer(4096),
        n_upserts: 0,
        deletes: copy::begin_buffer(0),
        n_deletes: 0,
        source: t.source.name.clone(),
        key_names: match cap.follow {
            Follow::ByKey(_) => t.key_names.clone(),
            Follow::ByImage => vec!["rowid".into()],
        },
        row_keys: Vec::new(),
    }
}

/// Prunes the changelog behind durable applies, in slices, between drains, when the app is
/// not inside a transaction (`sqlite::locks`): a write of ours between an app transaction's
/// read and its write would make SQLite refuse that write at once. It lives as long as the
/// stream, across connections: a fleet's tenant connects at each burst of work, and a pruner
/// made anew at each connect pruned at every drain past 10,000 changes, and never on time.
struct Pruner {
    /// The SQLite file, whose locks tell whether the app is inside a transaction.
    source: std::path::PathBuf,
    /// How long a prune's statements wait for the app's lock.
    busy_timeout: Duration,
    /// The connection prunes write with, kept only while a prune is unfinished: each open
    /// connection holds SQLite memory (its schema and pages; closing it saved 57 KB a tenant
    /// of a fleet), and a fleet's idle tenants would each keep one for a prune every 30 s.
    writer: Option<rusqlite::Connection>,
    /// Whose verified position holds changes back.
    tenant: String,
    /// A fleet's turns at pruning on time alone (`None`: a daemon of its own).
    turns: Option<std::sync::Arc<super::PruneTurns>>,
    /// Everything up to here is pruned.
    pruned_to: i64,
    /// When the last slice ran.
    last: Instant,
    /// The last slice ran out of time with rows left, or waited for the app.
    behind: bool,
    /// Since when every look found the app inside a transaction.
    waiting_since: Option<Instant>,
}

/// How often the changelog is pruned while the app writes: each prune is a moment the app may
/// find our write in its way.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// How many applied changes are pruned without waiting for [`PRUNE_EVERY`].
const PRUNE_AFTER: i64 = 10_000;

/// How long a prune waits for a moment the app is outside a transaction before it prunes
/// anyway (a changelog must not grow without end under an app that is never idle).
const PRUNE_PATIENCE: Duration = Duration::from_secs(300);

/// Why a prune is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    No,
    /// Work left from the last slice, or [`PRUNE_AFTER`] changes: it runs now.
    Work,
    /// Only [`PRUNE_EVERY`] has passed: in a fleet, it waits for its turn.
    Time,
}

impl Pruner {
    fn new(opts: &Options) -> Pruner {
        Pruner {
            source: opts.db.source.clone(),
            busy_timeout: opts.db.busy_timeout,
            writer: None,
            tenant: opts.db.tenant.clone(),
            turns: opts.link.as_ref().map(|l| l.prunes.clone()),
            pruned_to: 0,
            last: Instant::now(),
            behind: false,
            waiting_since: None,
        }
    }

    /// Whether a prune is due at `position`: after a drain, every 10,000 changes or every 30
    /// seconds (each prune is a moment the app may meet our write); caught up, whatever the
    /// app wrote since the last prune once it has rested a while.
    fn due(&self, position: i64, now: Instant) -> Due {
        if self.behind || position - self.pruned_to >= PRUNE_AFTER {
            Due::Work
        } else if position > self.pruned_to && now.duration_since(self.last) >= PRUNE_EVERY {
            Due::Time
        } else {
            Due::No
        }
    }

    /// Prunes if due, and in a fleet only in its turn when time alone makes it due.
    async fn maybe(&mut self, client: &tokio_postgres::Client, position: i64) {
        let now = Instant::now();
        let go = match self.due(position, now) {
            Due::No => false,
            Due::Work => true,
            Due::Time => self.turns.as_ref().is_none_or(|t| t.take(now)),
        };
        if go {
            self.slice(client, position).await;
        }
    }

    async fn slice(&mut self, client: &tokio_postgres::Client, position: i64) {
        // Changes after the last full verify stay for cutover to re-verify.
        let upto = match state::verified_position(client, &self.tenant).await {
            Ok(Some(v)) => v.min(position),
            Ok(None) => position,
            Err(_) => self.pruned_to,
        };
        // A slice of at most 10 ms: a million applied changes are pruned between the next
        // drains instead of holding them up for seconds.
        let budget = Duration::from_millis(10);
        // An app that is inside a transaction at every look for long gets its changelog pruned
        // anyway: it must not grow without end.
        let force = self
            .waiting_since
            .is_some_and(|since| since.elapsed() >= PRUNE_PATIENCE);
        if force {
            tracing::info!(
                "the app was inside a transaction at every look for {} s; pruning the changelog anyway (an app transaction that reads before it writes may be refused once; BEGIN IMMEDIATE in the app avoids that)",
                PRUNE_PATIENCE.as_secs()
            );
        }
        let pruned = tokio::task::block_in_place(|| {
            let writer = match self.writer.take() {
                Some(w) => w,
                None => sqlite::open_read_write(&self.source, self.busy_timeout)?,
            };
            let pruned = capture::prune(&writer, &self.source, upto, 2_000, budget, force);
            self.writer = Some(writer);
            pruned
        });
        if let Ok(p) = &pruned {
            crate::metrics::pruned(p.rows);
        }
        match pruned {
            Ok(p) if p.yielded => {
                self.waiting_since.get_or_insert_with(Instant::now);
                self.behind = true;
            }
            Ok(p) => {
                self.waiting_since = None;
                self.behind = !p.done;
                if p.done {
                    self.pruned_to = position;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "changelog prune deferred")
            }
        }
        if !self.behind {
            self.writer = None;
        }
        self.last = Instant::now();
    }
}

/// What one drain did.
enum Drained {
    /// The changelog had nothing after the position.
    Nothing,
    /// Asked to stop mid-drain: rolled back, nothing applied.
    Shutdown,
    /// Applied and committed up to `position`.
    Applied {
        position: i64,
        changes: i64,
        per_table: Vec<(String, u64, u64)>,
        chunks: i32,
    },
}

/// Applies every change after `position`, up to the changelog's end, in ONE Postgres
/// transaction: chunk by chunk, each read in its own short SQLite read transaction (the app's
/// writers are never held up for long) and staged in Postgres, until a chunk reaches the end of
/// the changelog as its read saw it. Every key changed after an earlier chunk read it is read
/// again by a later chunk (its change has a later sequence number), so the staged states are
/// all SQLite's as of that last read: readers of Postgres see one committed SQLite state, never
/// half a transaction, however large the backlog. Memory holds one chunk.
#[allow(clippy::too_many_arguments)]
async fn drain(
    applier: &mut Applier,
    reader: &mut rusqlite::Connection,
    plan: &Plan,
    captured: &BTreeMap<i64, Captured>,
    handoff: &state::ImageHandoff,
    readers: &BTreeMap<i64, RowReader>,
    opts: &Options,
    position: i64,
    shutdown: &Shutdown,
) -> Result<Drained> {
    let read = |reader: &rusqlite::Connection, after: i64| {
        sqlite::read_now(reader, opts.db.busy_timeout, |r| {
            changes::read_batch(r, after, opts.batch_changes, opts.batch_bytes, readers)
        })
    };
    let mut batch = match read_retrying(reader, &read, position, shutdown).await? {
        Some(b) if b.changes > 0 => b,
        Some(_) => return Ok(Drained::Nothing),
        None => return Ok(Drained::Shutdown),
    };
    let mut tx = applier.begin();
    let (mut last, mut changes, mut max_at) = (position, 0i64, 0f64);
    let mut per_table: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    // Re-synchronized tables followed by row images get a handoff of their own for the rest of
    // this drain (the snapshot's says nothing about the re-read).
    let mut handoff = std::borrow::Cow::Borrowed(handoff);
    loop {
        let at_end = batch.at_end;
        if let Some(tbl) = batch.resync {
            last = batch.last_seq;
            changes += 1;
            max_at = max_at.max(batch.max_at);
            if let Some(cap) = captured.get(&tbl) {
                let t = &plan.tables[cap.plan_index];
                let done = resync(&mut tx, reader, t, cap, opts, shutdown).await?;
                let Some(marks) = done else {
                    return Ok(Drained::Shutdown);
                };
                if cap.follow == Follow::ByImage {
                    handoff.to_mut().replace(&t.source.name, marks);
                }
                per_table.entry(t.target.clone()).or_default();
            }
        } else if batch.changes > 0 {
            last = batch.last_seq;
            changes += batch.changes as i64;
            max_at = max_at.max(batch.max_at);
            let tables = encode_batch(plan, captured, &handoff, batch, tx.chunk())?;
            for t in &tables {
                let e = per_table.entry(t.table.clone()).or_default();
                e.0 += t.n_upserts;
                e.1 += t.n_deletes;
            }
            tx.stage(tables).await?;
        }
        if at_end {
            break;
        }
        // Dropping the transaction rolls it back: nothing of this drain is applied.
        batch = match read_retrying(reader, &read, last, shutdown).await? {
            Some(b) => b,
            None => return Ok(Drained::Shutdown),
        };
    }
    let chunks = tx.chunk();
    tx.commit(last, max_at, changes).await?;
    Ok(Drained::Applied {
        position: last,
        changes,
        per_table: per_table.into_iter().map(|(t, (u, d))| (t, u, d)).collect(),
        chunks,
    })
}

/// Re-synchronizes one table inside a drain, after a marker said its changes may have
/// bypassed the changelog (a migration rebuilt it, or changed its definition): every row is
/// read again in key order, chunk by chunk, each chunk in its own short read transaction, and
/// staged; the drain's commit writes only what differs and deletes what SQLite no longer has.
/// Consistent with the stream for the same reason as a drain: a row changed after its chunk
/// was read has a changelog row after the marker, which the same drain reads later.
/// For a table followed by row images, returns the handoff of the re-read (per chunk, the
/// largest rowid and the changelog position it saw); `None` when asked to stop meanwhile.
async fn resync(
    tx: &mut apply::Drain<'_>,
    reader: &mut rusqlite::Connection,
    t: &TablePlan,
    cap: &Captured,
    opts: &Options,
    shutdown: &Shutdown,
) -> Result<Option<Vec<(Option<i64>, i64)>>> {
    let name = &t.source.name;
    tracing::info!(table = %name, "re-synchronizing: comparing every row with Postgres");
    crate::metrics::set_phase(Phase::Resyncing);
    let total = tokio::task::block_in_place(|| sqlite::schema::count_rows(reader, name))?;
    let q = crate::sqlite::reader::ScanQuery::new(&t.source, &t.source_columns());
    let klen = q.key_len();
    'again: loop {
        tx.begin_resync(&table_batch(t, cap)).await?;
        let mut marks: Vec<(Option<i64>, i64)> = Vec::new();
        let mut version = None;
        let mut after: Option<Vec<OwnedValue>> = None;
        let mut copied = 0u64;
        loop {
            if shutdown.requested() {
                return Ok(None);
            }
            let chunk = tx.chunk();
            let mut b = table_batch(t, cap);
            let read = tokio::task::block_in_place(|| {
                crate::sqlite::reader::read_chunk_marked(
                    reader,
                    &q,
                    after.as_deref(),
                    opts.batch_changes.max(1000),
                    Duration::from_millis(100),
                    cap.follow == Follow::ByImage,
                    |row| {
                        let key: Vec<OwnedValue> =
                            row[..klen].iter().map(|v| v.to_owned_value()).collect();
                        copy::begin_row(&mut b.upserts, t.columns.len() + 1);
                        for (c, v) in t.columns.iter().zip(&row[klen..]) {
                            convert::encode(*v, &c.conv, &mut b.upserts).map_err(|e| {
                                conversion_error(t, &key, &c.source, &v.to_owned_value(), e)
                            })?;
                        }
                        apply::put_int4(
                            &mut b.upserts,
                            match cap.follow {
                                Follow::ByImage => 1,
                                Follow::ByKey(_) => chunk,
                            },
                        );
                        b.row_keys.push(key);
                        Ok(())
                    },
                )
            })?;
            if let Some((seq, v)) = read.mark {
                // A VACUUM renumbers the rowids that image chunks are cut by: start over.
                if version.is_some_and(|seen| seen != v) {
                    tracing::info!(table = %name, "the SQLite file changed shape (VACUUM?) during the re-synchronization; starting it over");
                    continue 'again;
                }
                version = Some(v);
                let upto = match (&read.last_key, read.exhausted) {
                    (Some(k), false) => match k.first() {
                        Some(OwnedValue::Integer(r)) => Some(*r),
                        _ => None,
                    },
                    _ => None,
                };
                marks.push((upto, seq));
            }
            copied += read.rows;
            b.n_upserts = read.rows;
            tx.stage(vec![b]).await?;
            crate::metrics::snapshot_progress(name, copied, total);
            if read.exhausted {
                break;
            }
            after = read.last_key;
        }
        tracing::info!(table = %name, rows = copied, "re-read for re-synchronization; the differences are written with this drain");
        crate::metrics::set_phase(Phase::Streaming);
        return Ok(Some(marks));
    }
}

/// One changelog range, retried while the app holds SQLite's write lock past the busy timeout
/// (never given up on); `None` when asked to stop meanwhile.
async fn read_retrying(
    reader: &mut rusqlite::Connection,
    read: &impl Fn(&rusqlite::Connection, i64) -> Result<Batch>,
    after: i64,
    shutdown: &Shutdown,
) -> Result<Option<Batch>> {
    loop {
        if shutdown.requested() {
            return Ok(None);
        }
        match read(reader, after) {
            Ok(b) => return Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::SourceBusy => {
                tracing::warn!(error = %e, "SQLite is busy; retrying");
                tokio::select! {
                    _ = shutdown.wait() => return Ok(None),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Why the stream returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Asked to stop.
    Shutdown,
    /// The SQLite schema changed: re-plan (new tables, new columns) and stream on.
    SchemaChanged,
    /// Every change is applied (only with `Until::CaughtUp`).
    CaughtUp,
    /// The migration was cut over: Postgres is the database now.
    CutOver,
}

fn schema_version(conn: &rusqlite::Connection) -> Result<i64> {
    conn.prepare_cached("PRAGMA schema_version")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(|e| Error::from_sqlite("cannot read the SQLite schema version", e))
}

/// The forward direction: SQLite's changelog into Postgres.
struct Forward<'a> {
    plan: &'a Plan,
    installed: &'a Installed,
    opts: &'a Options,
    captured: BTreeMap<i64, Captured>,
    readers: BTreeMap<i64, RowReader>,
    /// Reads the changelog and the rows.
    reader: rusqlite::Connection,
    wake: Wake,
    /// The schema version the plan was last checked against (-1: not yet).
    seen_version: i64,
    /// The position Postgres holds, as last read or applied (kept while not connected).
    known_position: Option<i64>,
    /// A connection that already holds the run lock, used first.
    first: Option<pg::pool::Session>,
    /// A connection waiting for the run lock.
    waiting: Option<pg::pool::Session>,
    /// What applies, once connected and holding the lock.
    live: Option<Live>,
    /// How the tables are applied, kept while not connected (not after an error).
    shapes: apply::Shapes,
    pruner: Pruner,
}

/// What wakes the forward stream: a watcher of its own, or the fleet's.
enum Wake {
    Own {
        /// Watches while it lives.
        _watcher: notify::RecommendedWatcher,
        rx: tokio::sync::mpsc::Receiver<()>,
    },
    Fleet(std::sync::Arc<tokio::sync::Notify>),
}

/// A connection holding the run lock, and what the stream keeps on it.
struct Live {
    applier: Applier,
    handoff: state::ImageHandoff,
    position: i64,
}

impl<'a> Forward<'a> {
    fn new(
        plan: &'a Plan,
        installed: &'a Installed,
        opts: &'a Options,
        first: Option<pg::pool::Session>,
    ) -> Result<Forward<'a>> {
        let mut readers = BTreeMap::new();
        let mut captured = BTreeMap::new();
        for (id, name) in &installed.tables {
            let Some((i, t)) = plan
                .tables
                .iter()
                .enumerate()
                .find(|(_, t)| &t.source.name == name)
            else {
                continue;
            };
            if t.source.follow() == Follow::ByImage {
                let positions: Option<Vec<usize>> = t
                    .columns
                    .iter()
                    .map(|c| t.source.columns.iter().position(|sc| sc.name == c.source))
                    .collect();
                let Some(positions) = positions else {
                    return Err(Error::new(
                        ErrorKind::Schema,
                        format!(
                            "table {name}: a copied column is gone from SQLite; run again to re-plan"
                        ),
                    ));
                };
                readers.insert(*id, RowReader::images(name, *id, &positions));
                captured.insert(
                    *id,
                    Captured {
                        plan_index: i,
                        follow: Follow::ByImage,
                    },
                );
                continue;
            }
            let keys = capture::key_columns(&t.source).unwrap_or_default();
            let key_positions: Option<Vec<usize>> = keys
                .iter()
                .map(|k| t.columns.iter().position(|c| &c.source == k))
                .collect();
            let Some(key_positions) = key_positions else {
                return Err(Error::new(
                    ErrorKind::Schema,
                    format!("table {name}: a key column is not copied to the target"),
                ));
            };
            readers.insert(*id, RowReader::new(name, &keys, &t.source_columns()));
            captured.insert(
                *id,
                Captured {
                    plan_index: i,
                    follow: Follow::ByKey(key_positions),
                },
            );
        }
        let reader = sqlite::open_read_only_now(&opts.db.source, opts.db.busy_timeout)?;
        let wake = match &opts.link {
            Some(link) => Wake::Fleet(link.file_changed.clone()),
            None => {
                let (watcher, rx) = file_watch::watch(&opts.db.source)?;
                Wake::Own {
                    _watcher: watcher,
                    rx,
                }
            }
        };
        Ok(Forward {
            plan,
            installed,
            opts,
            captured,
            readers,
            reader,
            wake,
            seen_version: -1,
            known_position: None,
            first,
            waiting: None,
            live: None,
            shapes: apply::Shapes::default(),
            pruner: Pruner::new(opts),
        })
    }

    /// Whether the app changed the schema in a way the plan must know (the version moves
    /// with any change, ours included; the shape and the capture's drift say whether it
    /// matters). Checked at start too: the app may have changed it since the plan was made.
    fn schema_changed(&mut self) -> Result<bool> {
        let version = sqlite::read_now(&self.reader, self.opts.db.busy_timeout, schema_version)?;
        if version == self.seen_version {
            return Ok(false);
        }
        let tables = tokio::task::block_in_place(|| sqlite::schema::read_tables(&self.reader))?;
        let drifted = tokio::task::block_in_place(|| {
            capture::drift(&self.reader, self.installed, &tables, |id| {
                self.captured.contains_key(&id)
            })
        })?;
        if sqlite::schema::shape(&tables) != self.plan.source_shape || !drifted.is_empty() {
            let position = self.live.as_ref().map(|l| l.position);
            tracing::info!(?position, rebuilt = ?drifted, "the SQLite schema changed; re-planning");
            return Ok(true);
        }
        self.seen_version = version;
        Ok(false)
    }
}

/// Why the forward stream ends by itself.
enum ForwardEnd {
    SchemaChanged,
    CutOver,
}

impl Direction for Forward<'_> {
    type End = ForwardEnd;
    const WAKES_EARLY: bool = true;

    async fn connect(&mut self) -> Result<Connected> {
        let client = match (self.waiting.take(), self.first.take()) {
            (Some(c), _) => c,
            (None, Some(c)) => c,
            (None, None) => pg::pool::session(&self.opts.db.target).await?,
        };
        // The run lock is retaken on every connection (a Postgres restart ends the session
        // that held it). Held elsewhere (another daemon, or this one's old session that
        // Postgres has not noticed is gone yet): nothing is applied until it is free.
        // The session's setting, the lock and the position in one round trip (requests
        // polled together are pipelined): a fleet's tenant connects at every burst of work.
        let tenant = &self.opts.db.tenant;
        let (configured, locked, st) = tokio::join!(
            Applier::configure(&client),
            state::try_lock(&client, tenant),
            state::stream_load(&*client, tenant),
        );
        configured?;
        if !locked? {
            self.waiting = Some(client);
            return Ok(Connected::LockHeld);
        }
        let applier = Applier::new(
            client,
            tenant,
            &self.opts.db.schema,
            self.opts.db.rows.clone(),
            std::mem::take(&mut self.shapes),
        );
        let Some(st) = st? else {
            return Err(Error::new(
                ErrorKind::Schema,
                "the stream position is missing from the sqlite2pg schema; run `sqlite2pg run` again",
            ));
        };
        // Only tables followed by row images have a snapshot handoff to read.
        let handoff = if self.captured.values().any(|c| c.follow == Follow::ByImage) {
            state::image_handoff(applier.client(), &self.opts.db.tenant).await?
        } else {
            state::ImageHandoff::default()
        };
        // A fleet's tenant connects again at each burst of work: said once.
        if self.known_position.replace(st.position).is_none() {
            tracing::info!(position = st.position, "streaming");
        }
        self.live = Some(Live {
            applier,
            handoff,
            position: st.position,
        });
        Ok(Connected::Ready)
    }

    fn disconnect(&mut self) {
        self.waiting = None;
        self.live = None;
    }

    async fn release(&mut self) {
        let waiting = self.waiting.take();
        let live = self.live.take().map(|l| {
            let (client, shapes) = l.applier.into_parts();
            // Kept for the next session: a tenant handed a session at each burst of work
            // reads its tables' shapes once, not at each hand-off.
            self.shapes = shapes;
            client
        });
        for client in waiting.into_iter().chain(live) {
            pg::pool::give_back(client, &self.opts.db.target).await;
        }
    }

    async fn apply(&mut self, stop: &Shutdown) -> Result<Applied<ForwardEnd>> {
        // A batch is only read with the columns the plan knows: re-plan first.
        if self.schema_changed()? {
            return Ok(Applied::End(ForwardEnd::SchemaChanged));
        }
        let Some(live) = self.live.as_mut() else {
            return Err(Error::new(
                ErrorKind::State,
                "the stream applied while not connected",
            ));
        };
        let started = Instant::now();
        let drained = drain(
            &mut live.applier,
            &mut self.reader,
            self.plan,
            &self.captured,
            &live.handoff,
            &self.readers,
            self.opts,
            live.position,
            stop,
        )
        .await;
        match drained {
            Ok(Drained::Nothing) => Ok(Applied::Nothing),
            Ok(Drained::Shutdown) => Ok(Applied::Stopped),
            Ok(Drained::Applied {
                position,
                changes,
                per_table,
                chunks,
            }) => {
                live.position = position;
                self.known_position = Some(position);
                let secs = started.elapsed().as_secs_f64();
                crate::metrics::batch_applied(&per_table, changes as u64, secs, position);
                tracing::debug!(position, changes, chunks, secs, "drain applied");
                self.pruner.maybe(live.applier.client(), position).await;
                Ok(Applied::Batch)
            }
            Err(e) if e.kind().retry_policy() == RetryPolicy::RetryLater => Err(e),
            // A migration that committed between the schema check and the read (a column
            // gone, a table rebuilt) is a schema change, not a failure.
            Err(_)
                if tokio::task::block_in_place(|| schema_version(&self.reader))
                    .is_ok_and(|v| v != self.seen_version) =>
            {
                tracing::info!(
                    position = live.position,
                    "the SQLite schema changed during a drain (rolled back); re-planning"
                );
                Ok(Applied::End(ForwardEnd::SchemaChanged))
            }
            Err(e) => {
                crate::metrics::error(e.kind().label(), Some(&e.to_string()));
                // Kept for `status`; best effort, the connection may be what failed.
                let _ = state::stream_error(
                    live.applier.client(),
                    &self.opts.db.tenant,
                    &e.to_string(),
                )
                .await;
                Err(e)
            }
        }
    }

    async fn idle(&mut self) -> Result<Option<ForwardEnd>> {
        let Some(live) = self.live.as_mut() else {
            return Ok(None);
        };
        self.pruner
            .maybe(live.applier.client(), live.position)
            .await;
        report_lag(&self.reader, self.opts.db.busy_timeout, live.position);
        // A cutover raises the fence in SQLite before it records itself on Postgres: with no
        // fence ever raised there is nothing to read there (a fleet's tenant comes here at
        // every hand-off of a session).
        let never_fenced = sqlite::read_now(
            &self.reader,
            self.opts.db.busy_timeout,
            capture::fence_state,
        )
        .is_ok_and(|f| f.is_none());
        if never_fenced {
            return Ok(None);
        }
        let Some(c) = state::cutover_load(live.applier.client(), &self.opts.db.tenant).await?
        else {
            return Ok(None);
        };
        crate::metrics::cutover(c.window_ms / 1000.0);
        crate::metrics::set_phase(Phase::CutOver);
        tracing::info!(
            position = live.position,
            "the migration is cut over: Postgres is the database now; stopping"
        );
        Ok(Some(ForwardEnd::CutOver))
    }

    async fn changed(&mut self) {
        match &mut self.wake {
            Wake::Own { rx, .. } => {
                if rx.recv().await.is_none() {
                    // The watcher is gone: the poll interval wakes the stream.
                    std::future::pending::<()>().await;
                }
            }
            Wake::Fleet(n) => n.notified().await,
        }
    }

    fn worth_connecting(&mut self) -> bool {
        // Without a connection: the changelog past the last applied position, a schema
        // change, or the cutover's fence (the cutover is read on Postgres at the next look).
        // Any error (a busy file included) is worth a look with a connection.
        let known = self.known_position;
        let look = sqlite::read_now(&self.reader, self.opts.db.busy_timeout, |r| {
            let (newest, _, _) = changes::pending(r, i64::MAX)?;
            let fence = capture::fence_state(r)?.is_some_and(|f| f.active);
            Ok((newest, fence, schema_version(r)?))
        });
        !matches!(look, Ok((n, false, v)) if known.is_some_and(|k| n <= k) && v == self.seen_version)
    }
}

/// Streams until `shutdown` turns true or the SQLite schema changes. An error that needs the
/// operator (a value that cannot be converted, a schema mismatch) stops it with the position kept.
/// `first`, a connection that already holds the run lock, is used before any new one: handing
/// it over leaves no moment in which `status` sees no daemon.
pub async fn run(
    plan: &Plan,
    installed: &Installed,
    opts: &Options,
    shutdown: Shutdown,
    first: Option<pg::pool::Session>,
) -> Result<End> {
    let mut forward = Forward::new(plan, installed, opts, first)?;
    crate::metrics::set_phase(Phase::Streaming);
    let mut follower =
        Follower::new(opts.until, opts.poll_interval, shutdown).releasing(opts.link.is_some());
    Ok(match follower.run(&mut forward).await? {
        Ended::Stopped => End::Shutdown,
        Ended::CaughtUp => End::CaughtUp,
        Ended::By(ForwardEnd::SchemaChanged) => End::SchemaChanged,
        Ended::By(ForwardEnd::CutOver) => End::CutOver,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pruner(pruned_to: i64, last: Instant) -> Pruner {
        Pruner {
            source: "app.db".into(),
            busy_timeout: Duration::ZERO,
            writer: None,
            tenant: String::new(),
            turns: None,
            pruned_to,
            last,
            behind: false,
            waiting_since: None,
        }
    }

    #[test]
    fn a_prune_is_due_at_once_for_work_and_after_thirty_seconds_for_time() {
        let now = Instant::now();
        let fresh = pruner(0, now);
        assert_eq!(fresh.due(PRUNE_AFTER - 1, now), Due::No);
        assert_eq!(fresh.due(PRUNE_AFTER, now), Due::Work);
        assert_eq!(fresh.due(1, now + PRUNE_EVERY), Due::Time);
        assert_eq!(fresh.due(0, now + PRUNE_EVERY), Due::No, "nothing to prune");
        // Counted from where the last prune ended, not from the changelog's start.
        let pruned = pruner(50_000, now);
        assert_eq!(pruned.due(50_000 + PRUNE_AFTER - 1, now), Due::No);
        let behind = Pruner {
            behind: true,
            ..pruner(50_000, now)
        };
        assert_eq!(behind.due(50_000, now), Due::Work);
    }
}
