//! Applies changes with set-based statements, one Postgres transaction per drain. A drain
//! stages one or more chunks of current row states (each read in its own short SQLite read
//! transaction) in temporary tables, then writes each changed key's final state and the new
//! stream position in the same transaction. Readers of Postgres therefore only ever see the
//! state SQLite had when the drain's last chunk was read, however large the backlog, while
//! memory holds one chunk. Applying the same drain twice is harmless.
//!
//! The temp tables are the session's and outlive a drain; each drain empties the ones it
//! staged in before its `COMMIT` (a rollback leaves them empty too; see [`DELETE_UP_TO`]).
//! `ON COMMIT DELETE ROWS` would truncate every temp table of the session at every commit,
//! each with its TOAST table and index: at 1,000 tenants that was a fifth of Postgres' CPU (a
//! `perf` profile of the whole machine at 500 writes a second).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use super::pipeline::{self, Pipeline};
use super::pool::Session;
use super::{Rows, copy, qualified, quote_ident, state};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{OwnedValue, display_key};

/// One table's part of a chunk, already encoded as binary COPY data.
#[derive(Debug)]
pub struct TableBatch {
    /// Index of the table in the plan (names its temp tables).
    pub index: usize,
    /// Target table.
    pub table: String,
    /// Target columns, in the order of `upserts`' fields.
    pub columns: Vec<String>,
    /// Target key columns, in the order of `deletes`' fields.
    pub keys: Vec<String>,
    /// Rows that exist in SQLite (started with `copy::begin_buffer`; each row ends with the
    /// chunk number, see [`Drain::chunk`]). For a table followed by row images (`keys` is
    /// empty): the images, each ending with its sign.
    pub upserts: BytesMut,
    /// How many rows `upserts` holds.
    pub n_upserts: u64,
    /// Keys of rows that no longer exist (each row ends with the chunk number too).
    pub deletes: BytesMut,
    /// How many keys `deletes` holds.
    pub n_deletes: u64,
    /// The source table, for messages.
    pub source: String,
    /// Names of the source key columns (`rowid` for row images), for messages.
    pub key_names: Vec<String>,
    /// The key of each row of `upserts`, in order: a row Postgres rejects is named by it.
    pub row_keys: Vec<Vec<OwnedValue>>,
}

/// The column that orders staged states of one key: the chunk that read it.
const GEN: &str = "_sqlite2pg_chunk";

/// Appends an int4 field: the chunk number that ends a staged row, or a row image's sign.
pub fn put_int4(buf: &mut BytesMut, v: i32) {
    buf.put_i32(4);
    buf.put_i32(v);
}

/// The column holding a staged row image's sign.
const SIGN: &str = "_sqlite2pg_sign";

/// How a table's final states are written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// `INSERT ... ON CONFLICT (key) DO UPDATE`: the key's index is the table's only unique one.
    Upsert,
    /// Every changed key's row is deleted, then the final rows inserted: with other unique
    /// indexes, values swapped or moved between rows (SQLite checks uniqueness per statement,
    /// Postgres per row) could otherwise collide midway.
    Replace,
    /// Row images: per distinct row, the signs add up to how many copies appeared or left.
    Images(ImageSql),
}

/// The pieces of SQL that match staged row images with target rows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageSql {
    /// Staged columns as selected into the temp table (json as text: json has no `=`).
    staged: String,
    /// Staged columns, for GROUP BY.
    group: String,
    /// Target row `r` equals net image `n`.
    matches: String,
    /// Net image `n` as target values.
    values: String,
}

/// How a table is applied, and the shape tag naming its temp tables.
#[derive(Debug, Clone)]
struct Prepared {
    /// The statements that make its temp tables in a session that lacks them.
    create: String,
    mode: Mode,
    /// The temp tables are `_s2p_up_TAG`, `_s2p_del_TAG` or `_s2p_img_TAG`, TAG a hash of
    /// their columns' names, types and collations: a session handed from tenant to tenant
    /// (`pg::pool`) keeps them for every tenant whose table has that shape, and one of
    /// another shape gets tables of its own, never one whose columns differ.
    tag: String,
}

/// How each table of one migration is applied, read from the catalog once and kept across
/// the sessions a fleet's tenant is handed (see [`Applier::into_parts`]); dropped with the
/// session after an error, so that a table a person changed meanwhile is read again.
#[derive(Debug, Default)]
pub struct Shapes(HashMap<usize, Prepared>);

/// What the drains made in a session that outlives them: its staging tables, and the COPY
/// statements prepared for them. A fleet's session goes from tenant to tenant (`pg::pool`),
/// and a tenant's drain of one write is two round trips when both are there already.
#[derive(Debug, Default)]
pub struct Staging {
    /// The tags whose temp tables the session has (made by committed drains).
    made: HashSet<String>,
    /// The COPY statements prepared in the session, by their text.
    copies: HashMap<String, Statement>,
}

impl Staging {
    /// Forgets everything: the session's temp tables were dropped.
    pub fn forget(&mut self) {
        *self = Staging::default();
    }
}

/// Applies drains on one connection.
pub struct Applier {
    session: Session,
    tenant: String,
    schema: String,
    rows: Rows,
    shapes: Shapes,
}

fn pg_err(what: String) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| Error::from_pg(what, e)
}

/// The temp table of one kind (`up`, `del`, `img`) that a shape is staged in, unquoted.
fn temp(kind: &str, tag: &str) -> String {
    format!("_s2p_{kind}_{tag}")
}

fn up(tag: &str) -> String {
    quote_ident(&temp("up", tag))
}

fn del(tag: &str) -> String {
    quote_ident(&temp("del", tag))
}

fn img(tag: &str) -> String {
    quote_ident(&temp("img", tag))
}

/// The tag of temp tables holding `columns` of `types` (name: type and collation), in a role
/// (`up`, `del`, `img`) each. The hash only names tables within one session of this process.
fn shape_tag(types: &HashMap<String, String>, roles: &[(&str, &[String])]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    for (role, columns) in roles {
        role.hash(&mut h);
        for c in *columns {
            c.hash(&mut h);
            types.get(c).hash(&mut h);
        }
    }
    format!("{:016x}", h.finish())
}

/// Each column of table `$1` with its type and collation, as the shape of temp tables made
/// from it.
const COLUMN_TYPES: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) || ' ' || a.attcollation::oid::text
     FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped";

/// The unique indexes of table `$1`: their columns, sorted, and whether the index is plain
/// (no predicate, no expression).
const UNIQUE_INDEXES: &str = "SELECT array_agg(a.attname::text ORDER BY a.attname::text) FILTER (WHERE a.attname IS NOT NULL), i.indpred IS NULL AND i.indexprs IS NULL
     FROM pg_index i LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) AND a.attnum > 0
     WHERE i.indrelid = $1::text::regclass AND i.indisunique GROUP BY i.indexrelid, i.indpred, i.indexprs";

impl Applier {
    /// Readies a session for applying (sent with the connect's other statements, in one
    /// round trip): applies must be durable before the changelog is pruned behind them, and
    /// a session handed from a tenant's snapshot had them asynchronous.
    pub async fn configure(client: &Client) -> Result<()> {
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(pg_err("cannot configure the apply session".into()))
    }

    /// Wraps a connection used only for applying, readied by [`Applier::configure`], with
    /// what is known of the tables' shapes.
    pub fn new(
        session: Session,
        tenant: &str,
        schema: &str,
        rows: Rows,
        shapes: Shapes,
    ) -> Applier {
        Applier {
            session,
            tenant: tenant.to_string(),
            schema: schema.to_string(),
            rows,
            shapes,
        }
    }

    /// The connection, for reading state.
    pub fn client(&self) -> &Client {
        &self.session
    }

    /// The session, to give back between drains (its staging tables are the session's),
    /// and the shapes, for the next session.
    pub fn into_parts(self) -> (Session, Shapes) {
        (self.session, self.shapes)
    }

    /// Starts a drain: one transaction, committed by [`Drain::commit`] (dropped: rolled back).
    /// Its `BEGIN` leaves with the drain's first statements.
    pub fn begin(&mut self) -> Drain<'_> {
        let (client, staging) = self.session.parts();
        Drain {
            client,
            pipe: Pipeline::default(),
            begun: false,
            ended: false,
            tenant: &self.tenant,
            schema: &self.schema,
            rows: &self.rows,
            known: &mut self.shapes.0,
            fresh: HashMap::new(),
            staging,
            fresh_made: HashSet::new(),
            fresh_copies: HashMap::new(),
            chunks: 0,
            tables: BTreeMap::new(),
        }
    }
}

/// What a drain staged for one table.
struct Staged {
    table: String,
    columns: Vec<String>,
    keys: Vec<String>,
    upserts: u64,
    deletes: u64,
    /// The COPY data staged for it, in bytes.
    bytes: u64,
    /// Every row of the table was staged by a re-synchronization (see [`Drain::begin_resync`]).
    resync: bool,
}

/// One drain in progress: a transaction of its own, opened, committed and rolled back by
/// statements sent in line with the others (tokio-postgres' `Transaction` awaits its `BEGIN`
/// alone, a round trip of its own at every drain).
pub struct Drain<'a> {
    client: &'a Client,
    /// Statements sent and not yet answered.
    pipe: Pipeline<'a>,
    /// `BEGIN` was sent.
    begun: bool,
    /// `COMMIT` was sent: the transaction is over, whatever it answers.
    ended: bool,
    tenant: &'a str,
    schema: &'a str,
    rows: &'a Rows,
    /// How the tables are applied, as committed drains read it.
    known: &'a mut HashMap<usize, Prepared>,
    /// What this drain read of it; kept only once it commits.
    fresh: HashMap<usize, Prepared>,
    /// What committed drains made in this session.
    staging: &'a mut Staging,
    /// Tags whose temp tables this drain made; they exist only once it commits.
    fresh_made: HashSet<String>,
    /// COPY statements this drain prepared, kept once it commits (the tables they fill
    /// may be this drain's).
    fresh_copies: HashMap<String, Statement>,
    chunks: i32,
    tables: BTreeMap<usize, Staged>,
}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        if self.begun && !self.ended {
            // Written now, after every statement of the drain: the session is out of the
            // transaction before anything else it is given runs.
            drop(pipeline::send(Box::pin(
                self.client.batch_execute("ROLLBACK"),
            )));
        }
    }
}

impl<'a> Drain<'a> {
    /// Sends the drain's `BEGIN`, once.
    fn open(&mut self) {
        if !self.begun {
            self.begun = true;
            let client = self.client;
            self.pipe.send(async move {
                client
                    .batch_execute("BEGIN")
                    .await
                    .map_err(pg_err("cannot start an apply transaction".into()))
            });
        }
    }

    /// The connection, once every statement sent so far has been answered (`BEGIN` too).
    async fn settled(&mut self) -> Result<&'a Client> {
        self.open();
        self.pipe.flush().await?;
        Ok(self.client)
    }

    /// The number the next staged chunk carries in its rows (see [`put_int4`]).
    pub fn chunk(&self) -> i32 {
        self.chunks
    }

    /// The tag of `t`'s temp tables, once [`Drain::prepare`] made them.
    fn tag(&self, t: &TableBatch) -> Result<String> {
        self.known
            .get(&t.index)
            .or_else(|| self.fresh.get(&t.index))
            .map(|p| p.tag.clone())
            .ok_or_else(|| {
                Error::new(
                    crate::error::ErrorKind::State,
                    format!("the apply tables of {} were not prepared", t.table),
                )
            })
    }

    /// Makes `t`'s temp tables (tagged `tag`) in this session. Inside the transaction: a
    /// rollback takes them away, and `fresh_made` is only kept by a commit, so the next drain
    /// makes them again.
    fn make(&mut self, t: &TableBatch, tag: String, create: String) {
        self.open();
        let (client, table) = (self.client, t.table.clone());
        self.pipe.send(async move {
            client.batch_execute(&create).await.map_err(pg_err(format!(
                "cannot prepare the apply tables for {table}"
            )))
        });
        self.fresh_made.insert(tag);
    }

    async fn prepare(&mut self, t: &TableBatch) -> Result<()> {
        if let Some(p) = self
            .known
            .get(&t.index)
            .or_else(|| self.fresh.get(&t.index))
        {
            if self.staging.made.contains(&p.tag) || self.fresh_made.contains(&p.tag) {
                return Ok(());
            }
            let (tag, create) = (p.tag.clone(), p.create.clone());
            self.make(t, tag, create);
            return Ok(());
        }
        let target = qualified(self.schema, &t.table);
        if t.keys.is_empty() {
            return self.prepare_images(t, &target).await;
        }
        let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(c)).collect();
        let keys: Vec<String> = t.keys.iter().map(|c| quote_ident(c)).collect();
        // Both read with the drain's BEGIN, typed (no prepare): a tenant's first drain after
        // a start reads every table it touches, and a fleet starts a thousand at once.
        self.open();
        let param = [(
            &target as &(dyn tokio_postgres::types::ToSql + Sync),
            Type::TEXT,
        )];
        let types = pipeline::send(Box::pin(self.client.query_typed(COLUMN_TYPES, &param)));
        let uniques = pipeline::send(Box::pin(self.client.query_typed(UNIQUE_INDEXES, &param)));
        self.pipe.flush().await?;
        let types: HashMap<String, String> = types
            .await
            .map_err(pg_err(format!("cannot read the columns of {}", t.table)))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let uniques = uniques.await.map_err(pg_err(format!(
            "cannot read the unique indexes of {}",
            t.table
        )))?;
        let tag = shape_tag(&types, &[("up", &t.columns), ("del", &t.keys)]);
        let create = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} AS SELECT {}, 0 AS {GEN} FROM {target} WITH NO DATA;
             CREATE TEMP TABLE IF NOT EXISTS {} AS SELECT {}, 0 AS {GEN} FROM {target} WITH NO DATA;",
            up(&tag),
            cols.join(", "),
            del(&tag),
            keys.join(", "),
        );
        self.make(t, tag.clone(), create.clone());
        // A shared table's keys lead with the tenant column.
        let mut key_sorted: Vec<&str> = t.keys.iter().map(String::as_str).collect();
        key_sorted.extend(self.rows.column());
        key_sorted.sort();
        let key_index = |r: &tokio_postgres::Row| {
            let cols: Option<Vec<String>> = r.get(0);
            let plain: bool = r.get(1);
            plain
                && cols
                    .is_some_and(|c| c.iter().map(String::as_str).collect::<Vec<_>>() == key_sorted)
        };
        let mode = if uniques.len() == 1 && key_index(&uniques[0]) {
            Mode::Upsert
        } else {
            Mode::Replace
        };
        self.fresh.insert(t.index, Prepared { create, mode, tag });
        Ok(())
    }

    async fn prepare_images(&mut self, t: &TableBatch, target: &str) -> Result<()> {
        let types = self
            .settled()
            .await?
            .query_typed(
                "SELECT a.attname::text, a.atttypid = 'json'::regtype, a.attnotnull,
                        format_type(a.atttypid, a.atttypmod) || ' ' || a.attcollation::oid::text
                 FROM pg_attribute a
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                &[(&target, Type::TEXT)],
            )
            .await
            .map_err(pg_err(format!("cannot read the columns of {}", t.table)))?;
        let (mut staged, mut group, mut matches, mut values) = (vec![], vec![], vec![], vec![]);
        let (mut target_row, mut image_row) = (vec![], vec![]);
        for c in &t.columns {
            let q = quote_ident(c);
            let (json, not_null) = types
                .iter()
                .find(|r| r.get::<_, String>(0) == *c)
                .map(|r| (r.get::<_, bool>(1), r.get::<_, bool>(2)))
                .unwrap_or((false, false));
            let (cast, back) = if json { ("::text", "::json") } else { ("", "") };
            staged.push(format!("{q}{cast} AS {q}"));
            group.push(q.clone());
            // `=` where NULL cannot occur lets an index on the column serve.
            let op = if not_null {
                "="
            } else {
                "IS NOT DISTINCT FROM"
            };
            matches.push(format!("r.{q}{cast} {op} n.{q}"));
            target_row.push(format!("r.{q}{cast}"));
            image_row.push(format!("n.{q}"));
            values.push(format!("n.{q}{back}"));
        }
        let sql = ImageSql {
            staged: staged.join(", "),
            group: group.join(", "),
            // The rows' text as one equality first: `IS NOT DISTINCT FROM` can be neither
            // hashed nor merged, so without it Postgres compares every image with every row
            // (16 s a batch for 4,000 images against 200,000 rows). The staged images have
            // the target's own column types, so the same value prints the same text.
            matches: format!(
                "ROW({})::text = ROW({})::text AND {}",
                target_row.join(", "),
                image_row.join(", "),
                matches.join(" AND ")
            ),
            values: values.join(", "),
        };
        // json is staged as text: the shape says so.
        let shapes: HashMap<String, String> = types
            .iter()
            .map(|r| {
                let shape: String = r.get(3);
                let json: bool = r.get(1);
                (r.get(0), if json { "json as text".into() } else { shape })
            })
            .collect();
        let tag = shape_tag(&shapes, &[("img", &t.columns)]);
        let create = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} AS SELECT {}, 0 AS {SIGN} FROM {target} WITH NO DATA",
            img(&tag),
            sql.staged
        );
        self.make(t, tag.clone(), create.clone());
        self.fresh.insert(
            t.index,
            Prepared {
                create,
                mode: Mode::Images(sql),
                tag,
            },
        );
        Ok(())
    }

    /// Stages one chunk: every table's rows COPYed into its temp tables, tagged with
    /// [`Drain::chunk`]. Later chunks supersede earlier ones key by key.
    pub async fn stage(&mut self, tables: Vec<TableBatch>) -> Result<()> {
        for mut t in tables {
            self.prepare(&t).await?;
            let upserts = std::mem::take(&mut t.upserts);
            let deletes = std::mem::take(&mut t.deletes);
            let (n_upserts, n_deletes) = (t.n_upserts, t.n_deletes);
            self.stage_counts(&t, (upserts.len() + deletes.len()) as u64);
            let tag = self.tag(&t)?;
            let named = std::sync::Arc::new(Named {
                source: t.source,
                table: t.table,
                key_names: t.key_names,
                row_keys: t.row_keys,
            });
            if t.keys.is_empty() {
                let cols = t.columns;
                self.copy_staged(
                    temp("img", &tag),
                    &named,
                    cols,
                    SIGN,
                    n_upserts,
                    upserts,
                    false,
                )
                .await?;
            } else {
                let up = temp("up", &tag);
                self.copy_staged(up, &named, t.columns, GEN, n_upserts, upserts, false)
                    .await?;
                let del = temp("del", &tag);
                self.copy_staged(del, &named, t.keys, GEN, n_deletes, deletes, true)
                    .await?;
            }
        }
        self.chunks += 1;
        Ok(())
    }

    /// COPYs `rows` rows (each ending with the `last` field) into temp table `name`.
    /// The COPY starts in line with the statements before it (the drain's `BEGIN`, a temp
    /// table made), and its end is read with the statements after it.
    #[allow(clippy::too_many_arguments)]
    async fn copy_staged(
        &mut self,
        name: String,
        named: &std::sync::Arc<Named>,
        columns: Vec<String>,
        last: &str,
        rows: u64,
        data: BytesMut,
        keys_only: bool,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        self.open();
        let fields: Vec<String> = columns.iter().cloned().chain([last.into()]).collect();
        let sql = copy::statement(None, &name, &fields);
        let table = named.table.clone();
        let ctx = move |e| Error::from_pg(format!("COPY into table {table} failed"), e);
        let known = self.staging.copies.get(&sql);
        let statement = match known.or_else(|| self.fresh_copies.get(&sql)) {
            Some(st) => st.clone(),
            None => {
                let prepared = pipeline::send(Box::pin(self.client.prepare(&sql)));
                self.pipe.flush().await?;
                let st = prepared.await.map_err(ctx.clone())?;
                self.fresh_copies.insert(sql, st.clone());
                st
            }
        };
        let started = pipeline::send(Box::pin(self.client.copy_in::<_, Bytes>(&statement)));
        self.pipe.flush().await?;
        let sink = started.await.map_err(ctx.clone())?;
        let data = data.freeze();
        let named = named.clone();
        self.pipe.send(async move {
            futures_util::pin_mut!(sink);
            let sent = async {
                sink.send(data.clone()).await?;
                sink.send(Bytes::from_static(&copy::TRAILER)).await?;
                sink.as_mut().finish().await
            };
            sent.await
                .map(|_| ())
                .map_err(|e| rejected_row(&named, &columns, &data, keys_only, ctx(e)))
        });
        Ok(())
    }

    fn stage_counts(&mut self, t: &TableBatch, bytes: u64) {
        let s = self.tables.entry(t.index).or_insert_with(|| Staged {
            table: t.table.clone(),
            columns: t.columns.clone(),
            keys: t.keys.clone(),
            upserts: 0,
            deletes: 0,
            bytes: 0,
            resync: false,
        });
        s.upserts += t.n_upserts;
        s.deletes += t.n_deletes;
        s.bytes += bytes;
    }

    /// Starts re-synchronizing a table in this drain: the chunks staged for it from here on
    /// are all its rows, read in key order. At commit, target rows that no staged state names
    /// are deleted, and only rows that differ are written. For a table followed by row images,
    /// the images staged so far are dropped: the re-read supersedes them, and the commit counts
    /// the target's own rows against it. Called again, it starts over.
    pub async fn begin_resync(&mut self, t: &TableBatch) -> Result<()> {
        self.prepare(t).await?;
        if t.keys.is_empty() {
            let sql = format!("DELETE FROM {}", img(&self.tag(t)?));
            self.settled()
                .await?
                .batch_execute(&sql)
                .await
                .map_err(pg_err(format!(
                    "cannot start re-synchronizing table {}",
                    t.table
                )))?;
        }
        self.stage_counts(t, 0);
        if let Some(s) = self.tables.get_mut(&t.index) {
            s.resync = true;
        }
        Ok(())
    }

    /// Writes every staged key's final state and moves the position to `position`, then
    /// commits: Postgres moves from one committed SQLite state to a later one in one step.
    /// The statements, the position and the `COMMIT` go together, in one round trip; an
    /// error in any of them leaves the transaction failed, and the `COMMIT` then rolls it back.
    pub async fn commit(mut self, position: i64, source_at: f64, changes: i64) -> Result<()> {
        self.open();
        let client = self.client;
        let tables = std::mem::take(&mut self.tables);
        for (index, s) in &tables {
            let Some(Prepared { mode, tag, .. }) = self
                .known
                .get(index)
                .or_else(|| self.fresh.get(index))
                .cloned()
            else {
                return Err(Error::new(
                    crate::error::ErrorKind::State,
                    format!("the apply tables of {} were not prepared", s.table),
                ));
            };
            if let Mode::Images(sql) = &mode {
                // Its statements check what they did: each waits for its answer.
                let client = self.settled().await?;
                if s.resync {
                    count_target_images(client, self.schema, self.rows, &tag, s, sql).await?;
                }
                write_images(client, self.schema, self.rows, &tag, s, sql).await?;
                self.empty(s, &[img(&tag)]);
                continue;
            }
            let target = Target {
                schema: self.schema,
                rows: self.rows,
            };
            let several = self.chunks > 1;
            for sql in final_state_statements(&target, &tag, s, mode == Mode::Upsert, several) {
                let (rows, table) = (self.rows, s.table.clone());
                self.pipe.send(async move {
                    client
                        .execute_typed(&sql, &rows.typed_params())
                        .await
                        .map(|_| ())
                        .map_err(pg_err(format!("cannot apply changes to table {table}")))
                });
            }
            self.empty(s, &[up(&tag), del(&tag)]);
        }
        let tenant = self.tenant;
        self.pipe.send(state::stream_advance(
            client, tenant, position, source_at, changes,
        ));
        self.pipe.send(async move {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(pg_err("cannot commit an applied batch".into()))
        });
        self.ended = true;
        self.pipe.flush().await?;
        let fresh = std::mem::take(&mut self.fresh);
        self.known.extend(fresh);
        let fresh_made = std::mem::take(&mut self.fresh_made);
        self.staging.made.extend(fresh_made);
        let fresh_copies = std::mem::take(&mut self.fresh_copies);
        self.staging.copies.extend(fresh_copies);
        Ok(())
    }

    /// Empties the temp tables `staged` (quoted) that `s` was staged in, in line with the
    /// drain's other statements. A few bytes of rows are deleted (`TRUNCATE` gives a table a
    /// new file and the catalog a new row); more are truncated (see [`DELETE_UP_TO`]).
    fn empty(&mut self, s: &Staged, staged: &[String]) {
        let sql = if s.resync || s.bytes > DELETE_UP_TO {
            format!("TRUNCATE {}", staged.join(", "))
        } else {
            staged.iter().map(|t| format!("DELETE FROM {t};")).collect()
        };
        let (client, table) = (self.client, s.table.clone());
        self.pipe.send(async move {
            client
                .batch_execute(&sql)
                .await
                .map_err(pg_err(format!("cannot empty the apply tables of {table}")))
        });
    }
}

/// The most bytes of rows a drain stages in a table and then deletes (more are truncated).
/// No `VACUUM` runs on temp tables, so the space of deleted rows is only found again on the
/// page that new rows go to: a read prunes a page once less than a tenth of it (819 bytes)
/// is free, and rows that fit in that tenth always go back into it. Larger batches deleted
/// would move on to a new page whenever the last was too full, leaving the old ones empty
/// and never used again: a table growing with every few drains.
const DELETE_UP_TO: u64 = 512;

/// What names a staged row to a person: its source table and key, not our temp table.
struct Named {
    source: String,
    table: String,
    key_names: Vec<String>,
    /// The key of each staged row, in order (none for staged keys of deleted rows).
    row_keys: Vec<Vec<OwnedValue>>,
}

/// A staged row Postgres refused (a value too long for a `varchar(n)`, out of a type's range),
/// named as the source has it: table, key, column and value, never our temp table.
fn rejected_row(t: &Named, columns: &[String], data: &[u8], keys_only: bool, e: Error) -> Error {
    use std::error::Error as _;
    let Some(db) = e
        .source()
        .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
        .and_then(|p| p.as_db_error())
    else {
        return e;
    };
    // Postgres says where: "COPY _s2p_up_0, line 3, column name".
    let place = db.where_().unwrap_or_default();
    let line = place
        .split("line ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0);
    let column = place
        .split(", column ")
        .nth(1)
        .map(|r| r.split(':').next().unwrap_or(r).to_string());
    let row = line
        .filter(|_| !keys_only)
        .and_then(|l| t.row_keys.get(l - 1))
        .map(|k| format!("row {}", display_key(&t.key_names, k)))
        .unwrap_or_else(|| "a row".into());
    let value = match (
        line,
        column
            .as_ref()
            .and_then(|c| columns.iter().position(|x| x == c)),
    ) {
        (Some(l), Some(f)) => match copy::field(data, l - 1, f) {
            Some(Some(b)) => match std::str::from_utf8(b) {
                // Binary fields of numbers and dates are no text to show.
                Ok(s) if s.chars().any(char::is_control) => {
                    format!(" a value of {} bytes", b.len())
                }
                Ok(s) if s.chars().count() > 80 => {
                    format!(" value '{}...'", s.chars().take(80).collect::<String>())
                }
                Ok(s) => format!(" value '{s}'"),
                Err(_) => format!(" a value of {} bytes", b.len()),
            },
            Some(None) => " NULL".into(),
            None => String::new(),
        },
        _ => String::new(),
    };
    // Class 22 is "data exception": the value, not the connection or the server.
    let kind = if db.code().code().starts_with("22") {
        ErrorKind::Conversion
    } else {
        e.kind()
    };
    Error::new(
        kind,
        format!(
            "table {}, {row}, column {}:{value} cannot be applied: Postgres says {}. The position is kept and nothing of this batch is applied; fix the value in SQLite, or change the column of {} in Postgres to hold it (run the app's migration there), and run again",
            t.source,
            column.as_deref().unwrap_or("?"),
            db.message(),
            t.table
        ),
    )
}

/// Where final states go: a schema, and the rows of its tables that are this tenant's.
struct Target<'a> {
    schema: &'a str,
    rows: &'a Rows,
}

/// The statements that turn staged states into final rows. With one chunk each key appears
/// once; with several, a key's state is the one of the newest chunk that read it. In a
/// shared table every statement names the tenant (`$1`): its rows only are read, matched and
/// deleted, and the rows it writes carry it.
fn final_state_statements(
    to: &Target<'_>,
    tag: &str,
    s: &Staged,
    upsert: bool,
    several_chunks: bool,
) -> Vec<String> {
    let target = qualified(to.schema, &s.table);
    let mine = |alias: &str| to.rows.and(alias, 1);
    let (lead_col, lead_val) = (to.rows.lead_column(), to.rows.lead_value(1));
    let keys: Vec<String> = s.keys.iter().map(|c| quote_ident(c)).collect();
    let key_list = keys.join(", ");
    let cols: Vec<String> = s.columns.iter().map(|c| quote_ident(c)).collect();
    let col_list = cols.join(", ");
    let same_key = |a: &str, b: &str| {
        keys.iter()
            .map(|k| format!("{a}.{k} = {b}.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    // Newest state per key: rows present in SQLite, and keys gone from it.
    let (present, gone) = if several_chunks {
        (
            format!(
                "(SELECT * FROM (SELECT DISTINCT ON ({key_list}) * FROM {u} ORDER BY {key_list}, {GEN} DESC) u
                  WHERE NOT EXISTS (SELECT 1 FROM {d} d WHERE {dk} AND d.{GEN} > u.{GEN}))",
                u = up(tag),
                d = del(tag),
                dk = same_key("d", "u"),
            ),
            format!(
                "(SELECT * FROM {d} d WHERE NOT EXISTS (SELECT 1 FROM {u} u WHERE {uk} AND u.{GEN} > d.{GEN}))",
                u = up(tag),
                d = del(tag),
                uk = same_key("u", "d"),
            ),
        )
    } else {
        (up(tag), del(tag))
    };
    let mut statements = Vec::new();
    let row_text = |alias: &str| {
        format!(
            "ROW({})::text",
            cols.iter()
                .map(|c| format!("{alias}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if s.resync {
        // Rows SQLite no longer holds: neither the re-read nor any later change names them.
        statements.push(format!(
            "DELETE FROM {target} t WHERE NOT EXISTS (SELECT 1 FROM {u} u WHERE {uk}) AND NOT EXISTS (SELECT 1 FROM {d} d WHERE {dk}){}",
            mine("t"),
            u = up(tag),
            d = del(tag),
            uk = same_key("u", "t"),
            dk = same_key("d", "t"),
        ));
    }
    if s.resync && !upsert {
        // Only keys whose row differs leave, and only missing rows come in: a re-read of a
        // whole table writes what differs, not the table again.
        statements.push(format!(
            "DELETE FROM {target} t USING (SELECT {key_list} FROM {u} UNION SELECT {key_list} FROM {d}) c WHERE {}{} \
             AND NOT EXISTS (SELECT 1 FROM {present} p WHERE {} AND {} = {})",
            same_key("t", "c"),
            mine("t"),
            same_key("p", "t"),
            row_text("p"),
            row_text("t"),
            u = up(tag),
            d = del(tag),
        ));
        statements.push(format!(
            "INSERT INTO {target} ({lead_col}{col_list}) OVERRIDING SYSTEM VALUE SELECT {lead_val}{col_list} FROM {present} p \
             WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {}{})",
            same_key("t", "p"),
            mine("t"),
        ));
    } else if upsert {
        if s.deletes > 0 {
            statements.push(format!(
                "DELETE FROM {target} t USING {gone} d WHERE {}{}",
                same_key("t", "d"),
                mine("t"),
            ));
        }
        if s.upserts > 0 {
            let sets: Vec<String> = s
                .columns
                .iter()
                .filter(|c| !s.keys.contains(c))
                .map(|c| format!("{q} = EXCLUDED.{q}", q = quote_ident(c)))
                .collect();
            let action = if sets.is_empty() {
                "NOTHING".to_string()
            } else if s.resync {
                format!(
                    "UPDATE SET {} WHERE {} IS DISTINCT FROM {}",
                    sets.join(", "),
                    row_text("t"),
                    row_text("EXCLUDED")
                )
            } else {
                format!("UPDATE SET {}", sets.join(", "))
            };
            statements.push(format!(
                "INSERT INTO {target} AS t ({lead_col}{col_list}) OVERRIDING SYSTEM VALUE SELECT {lead_val}{col_list} FROM {present} p ON CONFLICT ({lead_col}{key_list}) DO {action}"
            ));
        }
    } else {
        // Every changed key leaves first, so no final row meets a stale unique value.
        statements.push(format!(
            "DELETE FROM {target} t USING (SELECT {key_list} FROM {u} UNION SELECT {key_list} FROM {d}) c WHERE {}{}",
            same_key("t", "c"),
            mine("t"),
            u = up(tag),
            d = del(tag),
        ));
        if s.upserts > 0 {
            statements.push(format!(
                "INSERT INTO {target} ({lead_col}{col_list}) OVERRIDING SYSTEM VALUE SELECT {lead_val}{col_list} FROM {present} p"
            ));
        }
    }
    statements
}

/// A re-synchronized table followed by row images: every target row is staged with sign -1
/// beside SQLite's rows (+1), so the net count of each distinct row is exactly what differs.
async fn count_target_images(
    tx: &Client,
    schema: &str,
    rows: &Rows,
    tag: &str,
    s: &Staged,
    sql: &ImageSql,
) -> Result<()> {
    tx.execute(
        &format!(
            "INSERT INTO {} ({}, {SIGN}) SELECT {}, -1 FROM {}{}",
            img(tag),
            sql.group,
            sql.staged,
            qualified(schema, &s.table),
            rows.filter(1)
        ),
        &rows.params(),
    )
    .await
    .map_err(pg_err(format!(
        "cannot compare the rows of table {} for its re-synchronization",
        s.table
    )))?;
    Ok(())
}

/// Applies staged row images as multiset arithmetic: per distinct row, a negative sum deletes
/// that many copies, a positive one inserts that many. Deleting fewer rows than the images
/// say means Postgres no longer equals SQLite: that stops the drain instead of going on.
async fn write_images(
    tx: &Client,
    schema: &str,
    rows: &Rows,
    tag: &str,
    s: &Staged,
    sql: &ImageSql,
) -> Result<()> {
    if s.upserts == 0 && !s.resync {
        return Ok(());
    }
    let target = qualified(schema, &s.table);
    let staged = img(tag);
    let group = &sql.group;
    let err = |what: &str| pg_err(format!("cannot apply {what} to table {}", s.table));
    let want: i64 = tx
        .query_one(
            &format!(
                "SELECT coalesce(sum(-n), 0)::bigint FROM (SELECT sum({SIGN}) AS n FROM {staged} GROUP BY {group}) g WHERE n < 0"
            ),
            &[],
        )
        .await
        .map_err(err("row images"))?
        .get(0);
    if want > 0 {
        let deleted = tx
            .execute(
                &format!(
                    "DELETE FROM {target} t USING (
                       SELECT x.tid FROM (
                         SELECT r.ctid AS tid, row_number() OVER (PARTITION BY n.g ORDER BY r.ctid) AS rn, n.cnt
                         FROM {target} r JOIN (
                           SELECT row_number() OVER () AS g, {group}, -sum({SIGN}) AS cnt FROM {staged}
                           GROUP BY {group} HAVING sum({SIGN}) < 0
                         ) n ON {}{}
                       ) x WHERE x.rn <= x.cnt
                     ) d WHERE t.ctid = d.tid{}",
                    sql.matches,
                    rows.and("r", 1),
                    // A ctid names a row within one table; under Citus a shared table is
                    // many shards, and the tenant keeps the delete on its own.
                    rows.and("t", 1)
                ),
                &rows.params(),
            )
            .await
            .map_err(err("deleted rows"))?;
        if deleted as i64 != want {
            return Err(Error::new(
                crate::error::ErrorKind::Schema,
                format!(
                    "table {}: SQLite removed {want} rows that Postgres should hold, but Postgres had only {deleted} of them: the two sides differ (was the Postgres table written to?). Nothing of this batch is applied; see `sqlite2pg verify`, then re-copy the table",
                    s.table
                ),
            ));
        }
    }
    tx.execute(
        &format!(
            "INSERT INTO {target} ({}{}) OVERRIDING SYSTEM VALUE SELECT {}{} FROM
               (SELECT {group}, sum({SIGN}) AS cnt FROM {staged} GROUP BY {group} HAVING sum({SIGN}) > 0) n,
               generate_series(1, n.cnt)",
            rows.lead_column(),
            s.columns
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            rows.lead_value(1),
            sql.values
        ),
        &rows.params(),
    )
    .await
    .map_err(err("new rows"))?;
    Ok(())
}
