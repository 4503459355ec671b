//! Identity and serial sequences: moved past the largest copied id, so the app's inserts on
//! Postgres get fresh ids.

use super::{qualified, quote_ident};
use crate::error::{Error, Result};

fn pg_err(what: String) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| Error::from_pg(what, e)
}

/// Moves the identity and serial sequences of `tables` past the largest copied value;
/// returns how many.
///
/// A fleet's shared table (`rows` a tenant's) has one sequence for every tenant, and a tenant
/// cut over earlier takes ids from it: it moves past this tenant's largest id and never back.
/// An id handed out between its read and the move (within one statement) could still be
/// handed out again: the cutover, whose tenant's app starts taking ids next, takes
/// [`lock_against_inserts`] first; a snapshot's end does not (its many tenants would queue on the lock
/// behind each other's copies), and that race costs at worst one refused insert of a tenant
/// cut over earlier (a duplicate key), never a wrong row.
pub async fn move_past_max(
    tx: &impl tokio_postgres::GenericClient,
    schema: &str,
    tables: &[String],
    rows: &super::Rows,
) -> Result<usize> {
    let mut counters = Vec::new();
    for table in tables {
        let q = qualified(schema, table);
        let cols = tx
            .query(
                "SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped AND pg_get_serial_sequence($1, a.attname) IS NOT NULL",
                &[&q],
            )
            .await
            .map_err(pg_err(format!("cannot find the sequences of table {table}")))?;
        for c in cols {
            counters.push((table, q.clone(), c.get::<_, String>(0)));
        }
    }
    for (table, q, col) in &counters {
        // `setval(seq, max, true)` hands out max + 1 next, without computing max + 1 (which
        // overflows when SQLite's largest rowid is 9223372036854775807). An empty table, or
        // only ids below the sequence's start, starts at 1 (the identity's default start).
        let c = quote_ident(col);
        let max = match rows.condition(None, 3) {
            None => format!("SELECT max({c})::bigint AS m FROM {q}"),
            // This tenant's ids (its key's index finds the largest), or the last id the
            // sequence handed out (NULL before the first), whichever is larger.
            Some(tenant) => format!(
                "SELECT GREATEST(max({c})::bigint, pg_sequence_last_value(pg_get_serial_sequence($1, $2)::regclass)) AS m FROM {q} WHERE {tenant}"
            ),
        };
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence($1, $2), GREATEST(m, 1), COALESCE(m >= 1, false)) FROM ({max}) s"
        );
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![q, col];
        params.extend(rows.params());
        tx.query_one(&sql, &params).await.map_err(pg_err(format!(
            "cannot move the sequence of {table}.{col} past the copied ids"
        )))?;
    }
    Ok(counters.len())
}

/// Locks a fleet's shared `tables` (of `schema`) against inserts until the transaction ends,
/// all at once and without waiting while holding any: other tenants' writes hold them for a
/// moment, and may want one this transaction holds, so a try that finds one busy lets go of
/// all (its savepoint) and tries again shortly.
pub async fn lock_against_inserts(
    tx: &impl tokio_postgres::GenericClient,
    schema: &str,
    tables: &[String],
) -> Result<()> {
    let tables: Vec<String> = tables.iter().map(|t| qualified(schema, t)).collect();
    let lock = format!("LOCK TABLE {} IN SHARE MODE NOWAIT", tables.join(", "));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let what = || {
        format!(
            "cannot lock the shared tables {} to move their sequences",
            tables.join(", ")
        )
    };
    loop {
        tx.batch_execute("SAVEPOINT sqlite2pg_counters")
            .await
            .map_err(pg_err(what()))?;
        match tx.batch_execute(&lock).await {
            Ok(()) => {
                return tx
                    .batch_execute("RELEASE SAVEPOINT sqlite2pg_counters")
                    .await
                    .map_err(pg_err(what()));
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT sqlite2pg_counters")
                    .await
                    .map_err(pg_err(what()))?;
                if std::time::Instant::now() > deadline {
                    return Err(Error::new(
                        crate::error::ErrorKind::Target,
                        format!(
                            "{}: other sessions' writes held them for 10 s; try again when they are quieter",
                            what()
                        ),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(e) => return Err(Error::from_pg(what(), e)),
        }
    }
}
