//! Applies a batch of current row states with set-based statements: the rows are COPYed into
//! temporary tables, then one DELETE and one INSERT ... ON CONFLICT per table, and the new
//! stream position, all in one transaction. Applying the same batch twice is harmless.

use std::collections::HashSet;

use bytes::BytesMut;
use tokio_postgres::Client;

use super::{copy, qualified, quote_ident, state};
use crate::error::{Error, Result};

/// One table's part of a batch, already encoded as binary COPY data.
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
    /// Rows that exist in SQLite (started with `copy::begin_buffer`).
    pub upserts: BytesMut,
    /// How many rows `upserts` holds.
    pub n_upserts: u64,
    /// Keys of rows that no longer exist.
    pub deletes: BytesMut,
    /// How many keys `deletes` holds.
    pub n_deletes: u64,
}

/// Applies batches on one connection, remembering the temp tables it made.
pub struct Applier {
    client: Client,
    schema: String,
    temp_ready: HashSet<usize>,
}

fn pg_err(what: String) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| Error::from_pg(what, e)
}

impl Applier {
    /// Wraps a connection used only for applying.
    pub async fn new(client: Client, schema: &str) -> Result<Applier> {
        // Applies must be durable before the changelog is pruned behind them.
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(pg_err("cannot configure the apply session".into()))?;
        Ok(Applier {
            client,
            schema: schema.to_string(),
            temp_ready: HashSet::new(),
        })
    }

    /// The connection, for reading state.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn up(i: usize) -> String {
        quote_ident(&format!("_s2p_up_{i}"))
    }

    fn del(i: usize) -> String {
        quote_ident(&format!("_s2p_del_{i}"))
    }

    async fn ensure_temp(&mut self, t: &TableBatch) -> Result<()> {
        if self.temp_ready.contains(&t.index) {
            return Ok(());
        }
        let target = qualified(&self.schema, &t.table);
        let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(c)).collect();
        let keys: Vec<String> = t.keys.iter().map(|c| quote_ident(c)).collect();
        let sql = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT {} FROM {target} WITH NO DATA;
             CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT {} FROM {target} WITH NO DATA;",
            Self::up(t.index),
            cols.join(", "),
            Self::del(t.index),
            keys.join(", "),
        );
        self.client
            .batch_execute(&sql)
            .await
            .map_err(pg_err(format!(
                "cannot prepare the apply tables for {}",
                t.table
            )))?;
        self.temp_ready.insert(t.index);
        Ok(())
    }

    /// Applies every table's deletes, then upserts, and moves the position to `position`, in
    /// one transaction with deferrable constraints deferred to its commit.
    pub async fn apply(
        &mut self,
        mut tables: Vec<TableBatch>,
        position: i64,
        source_at: f64,
        changes: i64,
    ) -> Result<()> {
        for t in &tables {
            self.ensure_temp(t).await?;
        }
        let schema = self.schema.clone();
        let tx = self
            .client
            .transaction()
            .await
            .map_err(pg_err("cannot start an apply transaction".into()))?;
        tx.batch_execute("SET CONSTRAINTS ALL DEFERRED")
            .await
            .map_err(pg_err("cannot defer constraints".into()))?;
        // Deletes first: a key freed in SQLite (a UNIQUE value moved to another row) is free
        // in Postgres before any upsert takes it.
        for t in tables.iter_mut() {
            if t.n_deletes == 0 {
                continue;
            }
            let tmp = Self::del(t.index);
            let tmp_name = format!("_s2p_del_{}", t.index);
            copy::copy_in(
                &tx,
                None,
                &tmp_name,
                &t.keys,
                std::mem::take(&mut t.deletes),
            )
            .await?;
            let cond: Vec<String> = t
                .keys
                .iter()
                .map(|k| format!("t.{q} = d.{q}", q = quote_ident(k)))
                .collect();
            tx.execute(
                &format!(
                    "DELETE FROM {} t USING {tmp} d WHERE {}",
                    qualified(&schema, &t.table),
                    cond.join(" AND ")
                ),
                &[],
            )
            .await
            .map_err(pg_err(format!("cannot apply deletes to table {}", t.table)))?;
        }
        for t in tables.iter_mut() {
            if t.n_upserts == 0 {
                continue;
            }
            let tmp_name = format!("_s2p_up_{}", t.index);
            copy::copy_in(
                &tx,
                None,
                &tmp_name,
                &t.columns,
                std::mem::take(&mut t.upserts),
            )
            .await?;
            let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(c)).collect();
            let keys: Vec<String> = t.keys.iter().map(|c| quote_ident(c)).collect();
            let sets: Vec<String> = t
                .columns
                .iter()
                .filter(|c| !t.keys.contains(c))
                .map(|c| format!("{q} = EXCLUDED.{q}", q = quote_ident(c)))
                .collect();
            let action = if sets.is_empty() {
                "NOTHING".to_string()
            } else {
                format!("UPDATE SET {}", sets.join(", "))
            };
            let sql = format!(
                "INSERT INTO {} ({c}) OVERRIDING SYSTEM VALUE SELECT {c} FROM {} ON CONFLICT ({}) DO {action}",
                qualified(&schema, &t.table),
                Self::up(t.index),
                keys.join(", "),
                c = cols.join(", "),
            );
            tx.execute(&sql, &[])
                .await
                .map_err(pg_err(format!("cannot apply changes to table {}", t.table)))?;
        }
        state::stream_advance(&tx, position, source_at, changes).await?;
        tx.commit()
            .await
            .map_err(pg_err("cannot commit an applied batch".into()))?;
        Ok(())
    }
}
