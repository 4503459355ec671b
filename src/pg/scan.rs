//! Reads a target table in key order through a portal, a page at a time, as raw binary values:
//! what `verify` compares with SQLite's values encoded the way apply encodes them.

use std::error::Error as StdError;

use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Portal, Transaction};

use super::{Rows, qualified, quote_ident};
use crate::error::{Error, Result};
use crate::model::PgType;

/// A value as Postgres sends it in binary; `None` is NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw(pub Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> std::result::Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The ORDER BY term for a key column: text-like keys in byte order, as SQLite's BINARY
/// collation orders them.
pub fn order_term(column: &str, ty: &PgType) -> String {
    match ty {
        PgType::Text | PgType::Varchar { .. } | PgType::Bpchar { .. } => {
            format!("{} COLLATE \"C\"", quote_ident(column))
        }
        _ => quote_ident(column),
    }
}

/// Opens a portal over `columns` of a table's `rows` ordered by `order` (terms from
/// `order_term`).
pub async fn open(
    tx: &Transaction<'_>,
    schema: &str,
    rows: &Rows,
    table: &str,
    columns: &[String],
    order: &[String],
) -> Result<Portal> {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let sql = format!(
        "SELECT {} FROM {}{} ORDER BY {}",
        cols.join(", "),
        qualified(schema, table),
        rows.filter(1),
        order.join(", ")
    );
    tx.bind(sql.as_str(), &rows.params())
        .await
        .map_err(|e| Error::from_pg(format!("cannot read table {table} for verify"), e))
}

/// The next page of at most `max` rows; empty when the table is exhausted.
pub async fn page(
    tx: &Transaction<'_>,
    portal: &Portal,
    table: &str,
    max: i32,
) -> Result<Vec<Vec<Raw>>> {
    let rows = tx
        .query_portal(portal, max)
        .await
        .map_err(|e| Error::from_pg(format!("cannot read table {table} for verify"), e))?;
    Ok(rows
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i)).collect())
        .collect())
}
