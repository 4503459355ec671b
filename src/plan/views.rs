//! The app's views, translated for Postgres in the order they read one another: a view that
//! reads another comes after it, and one that reads a view that does not translate does not
//! translate either.

use std::collections::HashMap;

use rusqlite::Connection;

use super::Plan;
use super::Target;
use crate::error::{Error, Result};
use crate::expr::view::{self, Source};
use crate::pg::{ddl, qualified, quote_ident};

/// One of the app's views.
#[derive(Debug, Clone)]
pub struct ViewPlan {
    /// Its name in SQLite.
    pub name: String,
    /// Its CREATE VIEW in Postgres' SQL, or why there is none.
    pub create: std::result::Result<String, String>,
}

/// Every view in the SQLite file, in an order Postgres can create them in.
pub fn translate(conn: &Connection, plan: &Plan, schema: &str) -> Result<Vec<ViewPlan>> {
    let err = |e| Error::from_sqlite("cannot read the views", e);
    let mut stmt = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'view' AND sql IS NOT NULL ORDER BY name")
        .map_err(err)?;
    let views: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|r| r.collect())
        .map_err(err)?;
    let tables: HashMap<String, Source> = plan
        .tables
        .iter()
        .map(|t| {
            (
                t.source.name.to_lowercase(),
                (qualified(schema, &t.target), t.expr_columns()),
            )
        })
        .collect();
    let mut done: HashMap<String, Source> = HashMap::new();
    let mut out = Vec::new();
    let mut pending: Vec<(String, String)> = views;
    loop {
        let waiting = |name: &str, pending: &[(String, String)]| {
            pending.iter().any(|(p, _)| p.eq_ignore_ascii_case(name))
        };
        let (ready, rest): (Vec<_>, Vec<_>) = pending.iter().cloned().partition(|(name, sql)| {
            view::reads(sql)
                .iter()
                .all(|r| r.eq_ignore_ascii_case(name) || !waiting(r, &pending))
        });
        if ready.is_empty() {
            for (name, sql) in rest {
                let blocked: Vec<String> = view::reads(&sql)
                    .into_iter()
                    .filter(|r| waiting(r, &pending))
                    .collect();
                out.push(ViewPlan {
                    name,
                    create: Err(format!(
                        "it reads view(s) {} that do not translate",
                        blocked.join(", ")
                    )),
                });
            }
            break;
        }
        for (name, sql) in ready {
            let create = column_names(conn, &name).and_then(|names| {
                let lookup = |n: &str| {
                    let key = n.to_lowercase();
                    tables.get(&key).or_else(|| done.get(&key)).cloned()
                };
                let v = view::translate(&sql, &names, &lookup)?;
                let target = ddl::truncate_ident(&name);
                let cols: Vec<String> = names.iter().map(|n| quote_ident(n)).collect();
                let create = format!(
                    "CREATE VIEW {} ({}) AS {}",
                    qualified(schema, &target),
                    cols.join(", "),
                    v.select
                );
                // The app's migrations own those tables' schema: sqlite2pg adds nothing there.
                if let Some(app) = view::reads(&sql).iter().find(|r| {
                    plan.tables
                        .iter()
                        .any(|t| t.source.name.eq_ignore_ascii_case(r) && matches!(t.mode, Target::Existing))
                }) {
                    return Err(format!(
                        "it reads {app}, a table the app's migrations made on Postgres, and sqlite2pg adds nothing there; add the view in a migration: {create}"
                    ));
                }
                done.insert(name.to_lowercase(), (qualified(schema, &target), v.columns));
                Ok(create)
            });
            out.push(ViewPlan { name, create });
        }
        // A view that failed stays out of `done`, so the views reading it fail in turn.
        pending = rest;
        if pending.is_empty() {
            break;
        }
    }
    Ok(out)
}

/// A view's column names as SQLite gives them (an expression without AS is named by its text).
fn column_names(conn: &Connection, view: &str) -> std::result::Result<Vec<String>, String> {
    let mut stmt = conn
        .prepare(&format!(
            "PRAGMA table_info({})",
            crate::sqlite::quote_ident(view)
        ))
        .map_err(|e| format!("SQLite cannot read it: {e}"))?;
    stmt.query_map([], |r| r.get::<_, String>(1))
        .and_then(|r| r.collect())
        .map_err(|e| format!("SQLite cannot read it: {e}"))
}
