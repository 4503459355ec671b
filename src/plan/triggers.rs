//! The app's own triggers, ported to PL/pgSQL for the cutover. They go on Postgres in the
//! transaction that records the cutover, not before: while SQLite is the database, the changes
//! its triggers make arrive through the stream, and a trigger on Postgres would make them a
//! second time.

use rusqlite::Connection;
use tokio_postgres::GenericClient;

use super::Plan;
use super::Target;
use crate::error::{Error, Result};
use crate::expr::trigger::{self, Ported, Table};
use crate::pg::{ddl, qualified};
use crate::sqlite::capture;

/// One of the app's triggers.
#[derive(Debug, Clone)]
pub struct TriggerPlan {
    /// Its name in SQLite.
    pub name: String,
    /// The table it fires on, in SQLite.
    pub table: String,
    /// That table on Postgres is the app's own (its migrations made it): sqlite2pg adds no
    /// trigger to it, and `check` says whether the migration made one.
    pub app_table: bool,
    /// Its Postgres function and trigger, or why there are none.
    pub port: std::result::Result<Ported, String>,
}

/// Every trigger of the app in the SQLite file (sqlite2pg's own left out).
pub fn translate(conn: &Connection, plan: &Plan, schema: &str) -> Result<Vec<TriggerPlan>> {
    let err = |e| Error::from_sqlite("cannot read the app's triggers", e);
    let mut stmt = conn
        .prepare(
            "SELECT name, tbl_name, sql FROM sqlite_master
             WHERE type = 'trigger' AND sql IS NOT NULL AND substr(name, 1, ?1) <> ?2
             ORDER BY name",
        )
        .map_err(err)?;
    let prefix = capture::TRIGGER_PREFIX;
    let rows: Vec<(String, String, String)> = stmt
        .query_map(rusqlite::params![prefix.len() as i64, prefix], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .and_then(|r| r.collect())
        .map_err(err)?;
    let lookup = |name: &str| -> Option<Table> {
        let t = plan
            .tables
            .iter()
            .find(|t| t.source.name.eq_ignore_ascii_case(name))?;
        let s = &t.source;
        let key = if s.null_in_primary_key {
            Vec::new()
        } else {
            s.primary_key
                .iter()
                .map(|&i| s.columns[i].name.clone())
                .collect()
        };
        let lost_defaults = s
            .columns
            .iter()
            .filter(|c| c.default.is_some())
            .filter(|c| {
                // A table the app's migrations made is not ours to give defaults.
                let defs = t.spec().map_or(&[][..], |s| &s.column_defs[..]);
                defs.iter()
                    .find(|d| Some(d.name.as_str()) == target_of(t, &c.name))
                    .is_none_or(|d| d.default.is_none() && !d.identity)
            })
            .map(|c| c.name.clone())
            .collect();
        Some(Table {
            name: qualified(schema, &t.target),
            columns: t.expr_columns(),
            key,
            rowid_alias: s.rowid_alias.map(|i| s.columns[i].name.clone()),
            lost_defaults,
        })
    };
    Ok(rows
        .into_iter()
        .map(|(name, table, sql)| {
            let function = qualified(schema, &ddl::truncate_ident(&name));
            let app_table = plan.tables.iter().any(|t| {
                t.source.name.eq_ignore_ascii_case(&table) && matches!(t.mode, Target::Existing)
            });
            TriggerPlan {
                port: trigger::translate_trigger(&sql, &function, &lookup),
                name,
                table,
                app_table,
            }
        })
        .collect())
}

fn target_of<'a>(t: &'a super::TablePlan, source: &str) -> Option<&'a str> {
    t.columns
        .iter()
        .find(|c| c.source == source)
        .map(|c| c.target.as_str())
}

/// Whether a trigger of that name is on that table in Postgres already (the app's migrations,
/// or a port made by hand): it is left as it is.
pub async fn exists(client: &impl GenericClient, p: &Ported) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2)",
            &[&p.table, &p.name],
        )
        .await
        .map_err(|e| Error::from_pg(format!("cannot look for trigger {}", p.name), e))?;
    Ok(row.get(0))
}

/// Creates the function and the trigger.
pub async fn create(client: &impl GenericClient, p: &Ported) -> std::result::Result<(), String> {
    for sql in [&p.function, &p.trigger] {
        client.batch_execute(sql).await.map_err(|e| {
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string())
        })?;
    }
    Ok(())
}
