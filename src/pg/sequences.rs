//! Identity and serial sequences: moved past the largest copied id, so the app's inserts on
//! Postgres get fresh ids.

use super::{qualified, quote_ident};
use crate::error::{Error, Result};

fn pg_err(what: String) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| Error::from_pg(what, e)
}

/// Moves identity and serial sequences past the largest copied value; returns how many.
pub async fn move_past_max(
    tx: &impl tokio_postgres::GenericClient,
    schema: &str,
    table: &str,
) -> Result<usize> {
    let q = qualified(schema, table);
    let cols = tx
        .query(
            "SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped AND pg_get_serial_sequence($1, a.attname) IS NOT NULL",
            &[&q],
        )
        .await
        .map_err(pg_err(format!("cannot find the sequences of table {table}")))?;
    let moved = cols.len();
    for c in cols {
        let col: String = c.get(0);
        // `setval(seq, max, true)` hands out max + 1 next, without computing max + 1 (which
        // overflows when SQLite's largest rowid is 9223372036854775807). An empty table, or
        // only ids below the sequence's start, starts at 1 (the identity's default start).
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence($1, $2), GREATEST(m, 1), COALESCE(m >= 1, false)) FROM (SELECT max({})::bigint AS m FROM {q}) s",
            quote_ident(&col)
        );
        tx.query_one(&sql, &[&q, &col])
            .await
            .map_err(pg_err(format!(
                "cannot move the sequence of {table}.{col} past the copied ids"
            )))?;
    }
    Ok(moved)
}
