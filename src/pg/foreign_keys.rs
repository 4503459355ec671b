//! Foreign keys while streaming. SQLite enforces them only on connections that turned them on,
//! and apps rarely do, so a live SQLite file can hold orphans and may or may not have run its
//! ON DELETE actions. Postgres must hold exactly the same rows: no foreign key is enforced on
//! a replicated table, and no Postgres ON DELETE action runs on one, until cutover. Their
//! definitions (the app's own, from its migrations, or derived from SQLite) wait in the state
//! schema; cutover adds them `NOT VALID` inside the window and validates them afterwards.

use tokio_postgres::{Client, GenericClient};

use super::ddl::{self, ForeignKeyDef};
use super::state::STATE_SCHEMA;
use super::{qualified, quote_ident};
use crate::error::{Error, Result};

/// A foreign key kept aside until cutover.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeptForeignKey {
    /// Schema of the child table.
    pub schema: String,
    /// The child table.
    pub table: String,
    /// The constraint name.
    pub name: String,
    /// `FOREIGN KEY (...) REFERENCES ...` with actions and deferrability, as it will be added.
    pub definition: String,
    /// Child columns.
    pub columns: Vec<String>,
    /// Schema of the parent table.
    pub parent_schema: String,
    /// The parent table.
    pub parent_table: String,
    /// Parent columns, in the order of `columns`.
    pub parent_columns: Vec<String>,
}

impl KeptForeignKey {
    /// `child(cols) -> parent(cols)`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} on {}({}) -> {}({})",
            self.name,
            self.table,
            self.columns.join(", "),
            self.parent_table,
            self.parent_columns.join(", ")
        )
    }
}

fn pg(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::from_pg(format!("cannot {what}"), e)
}

fn insert_sql() -> String {
    format!(
        "INSERT INTO {STATE_SCHEMA}.foreign_key VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"
    )
}

/// Moves every foreign key on or referencing `tables` (in `schema`) into the store and drops
/// it, and stores the `derived` ones sqlite2pg would create on the tables it `created`, in one
/// transaction. Idempotent: each run does it again, so keys the app's migrations add on
/// Postgres meanwhile are taken over too. Needs ownership of the tables, not superuser.
/// Returns how many were dropped.
pub async fn take_over(
    client: &mut Client,
    schema: &str,
    tables: &[String],
    created: &[String],
    derived: &[(String, ForeignKeyDef)],
) -> Result<usize> {
    let tx = client
        .transaction()
        .await
        .map_err(pg("start a transaction"))?;
    lock_schema_keys(&tx, schema).await?;
    let insert = insert_sql();
    let rows = tx
        .query(
            "SELECT n.nspname::text, r.relname::text, c.conname::text, pg_get_constraintdef(c.oid),
                    ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
                    pn.nspname::text, p.relname::text,
                    ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                          JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
             FROM pg_constraint c
             JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace
             JOIN pg_class p ON p.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
             WHERE c.contype = 'f'
               AND ((n.nspname = $1 AND r.relname = ANY($2)) OR (pn.nspname = $1 AND p.relname = ANY($2)))
             ORDER BY 1, 2, 3",
            &[&schema, &tables],
        )
        .await
        .map_err(pg("read the foreign keys of the target tables"))?;
    for r in &rows {
        let (s, table, name, def): (String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        // Added NOT VALID by cutover whatever it was; keep the rest exactly as the app made it.
        let def = def.trim_end().trim_end_matches(" NOT VALID").to_string();
        let cols: Vec<String> = r.get(4);
        let (ps, pt, pcols): (String, String, Vec<String>) = (r.get(5), r.get(6), r.get(7));
        tx.execute(&insert, &[&s, &table, &name, &def, &cols, &ps, &pt, &pcols])
            .await
            .map_err(pg("keep a foreign key definition in the sqlite2pg schema"))?;
        tx.batch_execute(&format!(
            "ALTER TABLE {} DROP CONSTRAINT {}",
            qualified(&s, &table),
            quote_ident(&name)
        ))
        .await
        .map_err(pg(&format!(
            "drop foreign key {name} of table {table} while streaming (the user needs to own the table)"
        )))?;
    }
    // The keys of the tables sqlite2pg made are SQLite's as they are now: a migration that
    // rebuilt a table without a foreign key (or without its column) takes it away, and the
    // cutover must not add to Postgres a constraint SQLite no longer has.
    let before = tx
        .query(
            &format!(
                "DELETE FROM {STATE_SCHEMA}.foreign_key WHERE target_schema = $1 AND target_table = ANY($2) RETURNING target_table, name"
            ),
            &[&schema, &created],
        )
        .await
        .map_err(pg("renew the foreign keys kept for the tables sqlite2pg made"))?;
    for r in &before {
        let (table, name): (String, String) = (r.get(0), r.get(1));
        if !derived.iter().any(|(t, fk)| *t == table && fk.name == name) {
            tracing::info!(table = %table, foreign_key = %name, "this foreign key is gone from SQLite (a migration rebuilt the table): the cutover will not add it");
        }
    }
    for (table, fk) in derived {
        let def = ddl::foreign_key_clause(schema, fk);
        tx.execute(
            &insert,
            &[
                &schema,
                table,
                &fk.name,
                &def,
                &fk.columns,
                &schema,
                &fk.parent,
                &fk.parent_columns,
            ],
        )
        .await
        .map_err(pg("keep a foreign key definition in the sqlite2pg schema"))?;
    }
    tx.commit()
        .await
        .map_err(pg("commit the foreign keys kept aside"))?;
    Ok(rows.len())
}

/// Takes, until the end of the transaction, the right to take `schema`'s foreign keys aside
/// or to put them back. In a fleet's shared tables a tenant's snapshot takes them aside while
/// the last streaming tenant's cutover puts them back: one at a time, each sees what the
/// other committed (the cutover, the joining tenant's tables; the snapshot, the keys back).
pub async fn lock_schema_keys(client: &impl GenericClient, schema: &str) -> Result<()> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('sqlite2pg foreign keys of ' || $1, 0))",
            &[&schema],
        )
        .await
        .map_err(pg(&format!(
            "lock the foreign keys of schema {schema} (another tenant's snapshot or cutover holds them)"
        )))?;
    Ok(())
}

/// The foreign keys waiting for cutover on the tables of `schema`: a fleet keeps every
/// tenant's, and one tenant's cutover must add its own only (another's tables still stream,
/// and SQLite enforces none of their keys).
pub async fn kept(client: &impl GenericClient, schema: &str) -> Result<Vec<KeptForeignKey>> {
    if !super::state::state_table_exists(client, "foreign_key").await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!(
                "SELECT * FROM {STATE_SCHEMA}.foreign_key WHERE target_schema = $1 ORDER BY 1, 2, 3"
            ),
            &[&schema],
        )
        .await
        .map_err(pg("read the foreign keys kept in the sqlite2pg schema"))?;
    Ok(rows
        .iter()
        .map(|r| KeptForeignKey {
            schema: r.get(0),
            table: r.get(1),
            name: r.get(2),
            definition: r.get(3),
            columns: r.get(4),
            parent_schema: r.get(5),
            parent_table: r.get(6),
            parent_columns: r.get(7),
        })
        .collect())
}

/// Rows of one foreign key's child table whose key finds no parent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Orphans {
    /// The foreign key.
    pub foreign_key: KeptForeignKey,
    /// How many rows.
    pub count: i64,
    /// The first few: the child's key, and the value that finds no parent.
    pub examples: Vec<String>,
}

/// Counts the rows that would violate `fk` (MATCH SIMPLE: a row with a NULL in any key column
/// is not checked, as in both databases), with up to `limit` examples.
pub async fn orphans(
    client: &impl GenericClient,
    fk: &KeptForeignKey,
    limit: i64,
) -> Result<Orphans> {
    let child = qualified(&fk.schema, &fk.table);
    let parent = qualified(&fk.parent_schema, &fk.parent_table);
    let not_null: Vec<String> = fk
        .columns
        .iter()
        .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
        .collect();
    let join: Vec<String> = fk
        .columns
        .iter()
        .zip(&fk.parent_columns)
        .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
        .collect();
    let cond = format!(
        "{} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {})",
        not_null.join(" AND "),
        join.join(" AND ")
    );
    let what = format!("look for orphans of foreign key {}", fk.name);
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {child} c WHERE {cond}"), &[])
        .await
        .map_err(pg(&what))?
        .get(0);
    let mut examples = Vec::new();
    if count > 0 {
        // The child's primary key names the row, when it has one.
        let key: Vec<String> = client
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                 WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&child],
            )
            .await
            .map_err(pg(&what))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let label = |cols: &[String]| -> String {
            let parts: Vec<String> = cols
                .iter()
                .map(|c| {
                    format!(
                        "{} || '=' || coalesce(quote_literal(c.{}::text), 'NULL')",
                        quote_literal(c),
                        quote_ident(c)
                    )
                })
                .collect();
            if parts.is_empty() {
                "''".into()
            } else {
                parts.join(" || ', ' || ")
            }
        };
        let rows = client
            .query(
                &format!(
                    "SELECT {}, {} FROM {child} c WHERE {cond} LIMIT {limit}",
                    label(&key),
                    label(&fk.columns)
                ),
                &[],
            )
            .await
            .map_err(pg(&what))?;
        for r in rows {
            let (k, v): (String, String) = (r.get(0), r.get(1));
            let k = if k.is_empty() { "a row".into() } else { k };
            examples.push(format!(
                "{}: {k} has {v}, which no row of {} has",
                fk.table, fk.parent_table
            ));
        }
    }
    Ok(Orphans {
        foreign_key: fk.clone(),
        count,
        examples,
    })
}

/// Postgres' quoting of a string literal, for SQL text built from our own identifiers.
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Adds a kept foreign key `NOT VALID` (instant: existing rows are not read) and forgets it.
pub async fn add_not_valid(client: &impl GenericClient, fk: &KeptForeignKey) -> Result<()> {
    client
        .batch_execute(&format!(
            "ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID",
            qualified(&fk.schema, &fk.table),
            quote_ident(&fk.name),
            fk.definition
        ))
        .await
        .map_err(pg(&format!("add foreign key {}", fk.describe())))?;
    client
        .execute(
            &format!(
                "DELETE FROM {STATE_SCHEMA}.foreign_key WHERE target_schema = $1 AND target_table = $2 AND name = $3"
            ),
            &[&fk.schema, &fk.table, &fk.name],
        )
        .await
        .map_err(pg("forget a restored foreign key"))?;
    Ok(())
}

/// Validates a foreign key added `NOT VALID` (reads every row, blocks no writer); `Err` holds
/// Postgres' reason when rows violate it, and it then stays `NOT VALID`.
pub async fn validate(
    client: &Client,
    fk: &KeptForeignKey,
) -> Result<std::result::Result<(), String>> {
    match client
        .batch_execute(&ddl::validate_constraint(&fk.schema, &fk.table, &fk.name))
        .await
    {
        Ok(()) => Ok(Ok(())),
        Err(e) => match e.as_db_error() {
            Some(db) if db.code() == &tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION => {
                Ok(Err(db.message().to_string()))
            }
            _ => Err(Error::from_pg(
                format!("cannot validate foreign key {}", fk.describe()),
                e,
            )),
        },
    }
}
