//! The app's framework and its migrations on both sides: which framework made the SQLite
//! schema (and the command that makes its Postgres one), whether both sides are at the same
//! migrations, and the rows the app's migrations seeded on Postgres. The same findings reach
//! `check`, `run`, `verify` and `cutover` through the plan.

use rusqlite::Connection;
use tokio_postgres::Client;

use super::Finding;
use super::Plan;
use super::Severity;
use super::Target;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::framework::{self, Spec};
use crate::pg::{qualified, quote_ident, state};

/// The frameworks the SQLite file shows, each with its finding: the path it recommends, and
/// (given a target the app's migrations made) both sides' applied migrations. A difference
/// not named as equivalent (`--equivalent-migration`) is an error, so `run` stops on it
/// before anything is copied.
pub async fn findings(client: Option<&Client>, plan: &Plan, cfg: &Config) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    for spec in &plan.frameworks {
        let kept_apart = plan
            .app_versions
            .iter()
            .find(|v| v.spec.framework == spec.framework);
        let (Some(client), Some(v)) = (client, kept_apart) else {
            let table = plan
                .tables
                .iter()
                .find(|t| t.source.name.eq_ignore_ascii_case(spec.versions))
                .map(|t| t.source.name.clone())
                .unwrap_or_default();
            out.push(Finding {
                severity: Severity::Warning,
                table,
                column: None,
                message: format!(
                    "the app is made with {} ({} in the SQLite file), and sqlite2pg would make the Postgres schema: it types columns as {}'s Postgres backend does where the SQLite schema decides it (the notes beside the columns above), and names here what it cannot decide",
                    spec.name, spec.versions, spec.name
                ),
                hint: format!(
                    "let the app's own migrations make the Postgres schema first: {}; then `sqlite2pg check --target ...` compares both sides' migrations and `sqlite2pg run` copies the rows into it",
                    spec.migrate
                ),
            });
            continue;
        };
        if migration_started(client, cfg.tenant_id()).await? {
            // Compared before the first copy; since then each side's migrations are its own
            // (the app migrates SQLite, then Postgres, and the stream waits for the shapes).
            continue;
        }
        let sqlite_rows = tokio::task::block_in_place(|| {
            let conn = crate::sqlite::open_read_only(
                &cfg.source,
                std::time::Duration::from_millis(cfg.busy_timeout_ms),
            )?;
            sqlite_versions(&conn, spec, &v.source)
        })?;
        let pg_rows = pg_versions(client, spec, &cfg.target_schema, &v.target).await?;
        out.push(compare(spec, &v.source, &sqlite_rows, &pg_rows, cfg));
    }
    Ok(out)
}

/// Both sides' applied migrations, compared: the finding names both.
fn compare(
    spec: &Spec,
    table: &str,
    sqlite_rows: &[Vec<String>],
    pg_rows: &[Vec<String>],
    cfg: &Config,
) -> Finding {
    let (mut only_sqlite, mut only_pg) = framework::skew(sqlite_rows, pg_rows);
    let mut unknown = Vec::new();
    let mut taken = Vec::new();
    for (a, b) in &cfg.equivalent_migrations {
        match (
            only_sqlite.iter().position(|x| x == a),
            only_pg.iter().position(|x| x == b),
        ) {
            (Some(i), Some(j)) => {
                only_sqlite.remove(i);
                only_pg.remove(j);
                taken.push(format!("{a}={b}"));
            }
            _ => unknown.push(format!("{a}={b}")),
        }
    }
    let both = format!(
        "SQLite is at {}; Postgres is at {}",
        versions_text(sqlite_rows),
        versions_text(pg_rows)
    );
    let finding = |severity, message: String, hint: String| Finding {
        severity,
        table: table.to_string(),
        column: None,
        message,
        hint,
    };
    if !unknown.is_empty() {
        return finding(
            Severity::Error,
            format!(
                "--equivalent-migration {} names migrations that are not applied on one side only ({both})",
                unknown.join(" ")
            ),
            "name a migration applied in SQLite only, then the one applied on Postgres only that stands for it, as this message lists them".into(),
        );
    }
    if only_sqlite.is_empty() && only_pg.is_empty() {
        let accepted = if taken.is_empty() {
            String::new()
        } else {
            format!(" (taken as the same: {})", taken.join(", "))
        };
        return finding(
            Severity::Info,
            format!(
                "the app is made with {}, and its migrations made the Postgres schema (the path sqlite2pg recommends): both sides are at the same {} migration(s){accepted}. {both}; each side keeps its own {} rows (never copied, in either direction)",
                spec.name,
                sqlite_rows.len(),
                spec.versions
            ),
            String::new(),
        );
    }
    finding(
        Severity::Error,
        format!(
            "the app's {} migrations differ between the two sides: applied in SQLite only: [{}]; applied on Postgres only: [{}] ({both}). The app's code expects one schema; copying rows between two would break it",
            spec.name,
            only_sqlite.join(", "),
            only_pg.join(", ")
        ),
        format!(
            "bring both to the same migrations (run the missing ones with: {}; or deploy the code whose migrations SQLite has), then run sqlite2pg again; nothing was copied. An app that keeps one migration tree per database (Alembic with a version location per dialect, Prisma's per-provider migrations) has different ids on each side by design: confirm each side is at its own tree's head (`alembic heads` beside `alembic current` against each database), then name them as the same: {}",
            spec.migrate,
            suggestion(&only_sqlite, &only_pg)
        ),
    )
}

/// The flags that would take the differing migrations as the same, one for one in order.
fn suggestion(only_sqlite: &[String], only_pg: &[String]) -> String {
    if only_sqlite.len() == only_pg.len() {
        only_sqlite
            .iter()
            .zip(only_pg)
            .map(|(a, b)| format!("--equivalent-migration {a}={b}"))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        "--equivalent-migration SQLITE_VERSION=POSTGRES_VERSION for each".into()
    }
}

/// A side's migrations for a message: all of a few, else the count and the newest names.
fn versions_text(rows: &[Vec<String>]) -> String {
    let mut names: Vec<String> = rows.iter().map(|r| r.join(".")).collect();
    names.sort();
    match names.len() {
        0 => "no migration".into(),
        1..=4 => format!("[{}]", names.join(", ")),
        n => format!(
            "{n} migrations (last by name: {})",
            names[n - 3..].join(", ")
        ),
    }
}

/// Whether the migration has begun (capture installed and the stream's start recorded).
async fn migration_started(client: &Client, tenant: &str) -> Result<bool> {
    Ok(state::format_version(client).await? > 0
        && state::stream_load(client, tenant).await?.is_some())
}

/// A table the app's migrations made on Postgres that already holds rows they seeded
/// (content types, permissions, a default row), not copied into yet.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// The source table.
    pub table: String,
    /// The target table.
    pub target: String,
    /// Rows Postgres holds now.
    pub rows: i64,
}

/// The target tables the app's migrations made that hold rows, and whose copy has not begun:
/// the snapshot replaces their rows with SQLite's (SQLite's foreign keys point at SQLite's ids).
pub async fn seeded(
    client: &Client,
    plan: &Plan,
    tenant: &str,
    schema: &str,
) -> Result<Vec<Seeded>> {
    let mut out = Vec::new();
    for t in plan
        .tables
        .iter()
        .filter(|t| matches!(t.mode, Target::Existing))
    {
        if copy_started(client, tenant, &t.source.name).await? {
            continue;
        }
        let rows: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {}", qualified(schema, &t.target)),
                &[],
            )
            .await
            .map_err(|e| Error::from_pg(format!("cannot count the rows of {}", t.target), e))?
            .get(0);
        if rows > 0 {
            out.push(Seeded {
                table: t.source.name.clone(),
                target: t.target.clone(),
                rows,
            });
        }
    }
    Ok(out)
}

async fn copy_started(client: &Client, tenant: &str, table: &str) -> Result<bool> {
    Ok(state::format_version(client).await? > 0
        && state::load(client, tenant, table).await?.is_some())
}

fn sqlite_versions(conn: &Connection, spec: &Spec, table: &str) -> Result<Vec<Vec<String>>> {
    let cols: Vec<String> = spec
        .version_columns
        .iter()
        .map(|c| format!("CAST({} AS TEXT)", quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT {} FROM {}{}",
        cols.join(", "),
        quote_ident(table),
        spec.applied
            .map(|w| format!(" WHERE {w}"))
            .unwrap_or_default()
    );
    let err = |e| Error::from_sqlite(format!("cannot read the applied migrations in {table}"), e);
    let mut stmt = conn.prepare(&sql).map_err(err)?;
    let n = cols.len();
    let rows = stmt
        .query_map([], |r| {
            (0..n)
                .map(|i| r.get::<_, Option<String>>(i).map(Option::unwrap_or_default))
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .map_err(err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(err)
}

async fn pg_versions(
    client: &Client,
    spec: &Spec,
    schema: &str,
    table: &str,
) -> Result<Vec<Vec<String>>> {
    let cols: Vec<String> = spec
        .version_columns
        .iter()
        .map(|c| format!("{}::text", quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT {} FROM {}{}",
        cols.join(", "),
        qualified(schema, table),
        spec.applied
            .map(|w| format!(" WHERE {w}"))
            .unwrap_or_default()
    );
    let rows = client.query(&sql, &[]).await.map_err(|e| {
        Error::from_pg(
            format!("cannot read the applied migrations in {schema}.{table}"),
            e,
        )
    })?;
    Ok(rows
        .iter()
        .map(|r| {
            (0..cols.len())
                .map(|i| r.get::<_, Option<String>>(i).unwrap_or_default())
                .collect()
        })
        .collect())
}
