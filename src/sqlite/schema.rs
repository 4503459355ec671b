//! Reads the source schema from `sqlite_master` and the table pragmas.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::quote_ident;
use crate::error::{Error, Result};
use crate::model::{SourceColumn, SourceForeignKey, SourceIndex, SourceTable, TableKind};

/// Prefix of every object sqlite2pg creates in the SQLite file.
pub const OWN_PREFIX: &str = "_sqlite2pg";

/// Suffixes of the shadow tables FTS3/4/5 and R*Tree create beside a virtual table.
const SHADOW_SUFFIXES: &[&str] = &[
    "_data",
    "_idx",
    "_content",
    "_docsize",
    "_config",
    "_segments",
    "_segdir",
    "_stat",
    "_node",
    "_parent",
    "_rowid",
];

fn sq(e: rusqlite::Error, what: &str) -> Error {
    Error::from_sqlite(format!("cannot read the SQLite schema ({what})"), e)
}

/// Every table of the main schema except SQLite's and sqlite2pg's own, in name order, as of
/// one moment: in one read transaction, since the app's migrations may create, drop and rename
/// tables between two reads (Alembic's batch mode does all three).
pub fn read_tables(conn: &Connection) -> Result<Vec<SourceTable>> {
    if conn.is_autocommit() {
        super::in_read_transaction(conn, "the SQLite schema", || read_tables_now(conn))
    } else {
        read_tables_now(conn)
    }
}

fn read_tables_now(conn: &Connection) -> Result<Vec<SourceTable>> {
    let mut stmt = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .map_err(|e| sq(e, "sqlite_master"))?;
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            ))
        })
        .map_err(|e| sq(e, "sqlite_master"))?
        .collect::<rusqlite::Result<_>>()
        .map_err(|e| sq(e, "sqlite_master"))?;
    let virtual_names: Vec<String> = rows
        .iter()
        .filter(|(_, sql)| is_virtual_sql(sql))
        .map(|(n, _)| n.clone())
        .collect();
    let mut tables = Vec::new();
    for (name, sql) in rows {
        if name.starts_with("sqlite_") || name.starts_with(OWN_PREFIX) {
            continue;
        }
        let kind = if is_virtual_sql(&sql) {
            TableKind::Virtual
        } else if virtual_names.iter().any(|v| {
            name.strip_prefix(v.as_str())
                .is_some_and(|rest| SHADOW_SUFFIXES.contains(&rest))
        }) {
            TableKind::Shadow
        } else {
            TableKind::Plain
        };
        if kind != TableKind::Plain {
            tables.push(SourceTable {
                name,
                kind,
                columns: Vec::new(),
                primary_key: Vec::new(),
                rowid_alias: None,
                autoincrement: false,
                without_rowid: false,
                indexes: Vec::new(),
                key_collations: Vec::new(),
                foreign_keys: Vec::new(),
                sql,
                null_in_primary_key: false,
            });
            continue;
        }
        tables.push(read_table(conn, name, sql)?);
    }
    Ok(tables)
}

fn is_virtual_sql(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(3)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    words.len() == 3 && words[0] == "CREATE" && words[1] == "VIRTUAL" && words[2] == "TABLE"
}

fn read_table(conn: &Connection, name: String, sql: String) -> Result<SourceTable> {
    let q = quote_ident(&name);
    let mut columns = Vec::new();
    let mut pk_pos: Vec<(i64, usize)> = Vec::new();
    {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_xinfo({q})"))
            .map_err(|e| sq(e, &name))?;
        let mut rows = stmt.query([]).map_err(|e| sq(e, &name))?;
        while let Some(r) = rows.next().map_err(|e| sq(e, &name))? {
            let hidden: i64 = r.get(6).map_err(|e| sq(e, &name))?;
            if hidden == 1 {
                continue;
            }
            let pk: i64 = r.get(5).map_err(|e| sq(e, &name))?;
            if pk > 0 {
                pk_pos.push((pk, columns.len()));
            }
            columns.push(SourceColumn {
                name: r.get(1).map_err(|e| sq(e, &name))?,
                decl_type: r
                    .get::<_, Option<String>>(2)
                    .map_err(|e| sq(e, &name))?
                    .unwrap_or_default(),
                not_null: r.get::<_, i64>(3).map_err(|e| sq(e, &name))? != 0,
                default: r.get(4).map_err(|e| sq(e, &name))?,
                generated: hidden >= 2,
            });
        }
    }
    pk_pos.sort();
    let primary_key: Vec<usize> = pk_pos.into_iter().map(|(_, i)| i).collect();
    let without_rowid: bool = conn
        .query_row(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
            [&name],
            |r| r.get::<_, i64>(0),
        )
        .map_err(|e| sq(e, &name))?
        != 0;
    let upper_sql = sql.to_ascii_uppercase();
    let rowid_alias = match primary_key.as_slice() {
        [only] if !without_rowid && columns[*only].decl_type.eq_ignore_ascii_case("INTEGER") => {
            Some(*only)
        }
        _ => None,
    };
    let autoincrement = upper_sql.contains("AUTOINCREMENT");
    let (indexes, key_collations) = read_indexes(conn, &name)?;
    // No index of its own: an INTEGER PRIMARY KEY is the rowid, compared as a number.
    let key_collations = if key_collations.is_empty() {
        vec!["BINARY".to_string(); primary_key.len()]
    } else {
        key_collations
    };
    let foreign_keys = read_foreign_keys(conn, &name)?;
    // A non-INTEGER primary key of a rowid table admits NULLs (an old SQLite quirk kept for
    // compatibility); the key's own index finds them at once.
    let null_in_primary_key = !without_rowid
        && rowid_alias.is_none()
        && !primary_key.is_empty()
        && conn
            .query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {q} WHERE {})",
                    primary_key
                        .iter()
                        .map(|i| format!("{} IS NULL", quote_ident(&columns[*i].name)))
                        .collect::<Vec<_>>()
                        .join(" OR ")
                ),
                [],
                |r| r.get::<_, bool>(0),
            )
            .map_err(|e| sq(e, &name))?;
    Ok(SourceTable {
        null_in_primary_key,
        name,
        kind: TableKind::Plain,
        columns,
        primary_key,
        rowid_alias,
        autoincrement,
        without_rowid,
        indexes,
        key_collations,
        foreign_keys,
        sql,
    })
}

/// The table's indexes, and the collations of its primary key's own index (if it has one).
fn read_indexes(conn: &Connection, table: &str) -> Result<(Vec<SourceIndex>, Vec<String>)> {
    let mut list = Vec::new();
    {
        let mut stmt = conn
            .prepare(&format!("PRAGMA index_list({})", quote_ident(table)))
            .map_err(|e| sq(e, table))?;
        let mut rows = stmt.query([]).map_err(|e| sq(e, table))?;
        while let Some(r) = rows.next().map_err(|e| sq(e, table))? {
            let name: String = r.get(1).map_err(|e| sq(e, table))?;
            let unique = r.get::<_, i64>(2).map_err(|e| sq(e, table))? != 0;
            let origin: String = r.get(3).map_err(|e| sq(e, table))?;
            list.push((name, unique, origin));
        }
    }
    let mut out = Vec::new();
    let mut key_collations = Vec::new();
    for (name, unique, origin) in list {
        let mut columns = Vec::new();
        let mut descending = Vec::new();
        let mut collations = Vec::new();
        let mut stmt = conn
            .prepare(&format!("PRAGMA index_xinfo({})", quote_ident(&name)))
            .map_err(|e| sq(e, &name))?;
        let mut rows = stmt.query([]).map_err(|e| sq(e, &name))?;
        while let Some(r) = rows.next().map_err(|e| sq(e, &name))? {
            let key: i64 = r.get(5).map_err(|e| sq(e, &name))?;
            if key == 0 {
                continue;
            }
            columns.push(r.get::<_, Option<String>>(2).map_err(|e| sq(e, &name))?);
            descending.push(r.get::<_, i64>(3).map_err(|e| sq(e, &name))? != 0);
            collations.push(
                r.get::<_, Option<String>>(4)
                    .map_err(|e| sq(e, &name))?
                    .unwrap_or_else(|| "BINARY".into())
                    .to_uppercase(),
            );
        }
        if origin == "pk" {
            key_collations = collations;
            continue;
        }
        let sql: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [&name],
                |r| r.get(0),
            )
            .map_err(|e| sq(e, &name))?;
        let where_clause = sql.as_deref().and_then(extract_where);
        out.push(SourceIndex {
            name,
            unique,
            origin,
            columns,
            descending,
            collations,
            where_clause,
            sql,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, key_collations))
}

fn read_foreign_keys(conn: &Connection, table: &str) -> Result<Vec<SourceForeignKey>> {
    let mut by_id: BTreeMap<i64, SourceForeignKey> = BTreeMap::new();
    let mut stmt = conn
        .prepare(&format!("PRAGMA foreign_key_list({})", quote_ident(table)))
        .map_err(|e| sq(e, table))?;
    let mut rows = stmt.query([]).map_err(|e| sq(e, table))?;
    while let Some(r) = rows.next().map_err(|e| sq(e, table))? {
        let id: i64 = r.get(0).map_err(|e| sq(e, table))?;
        let parent: String = r.get(2).map_err(|e| sq(e, table))?;
        let from: String = r.get(3).map_err(|e| sq(e, table))?;
        let to: Option<String> = r.get(4).map_err(|e| sq(e, table))?;
        let on_update: String = r.get(5).map_err(|e| sq(e, table))?;
        let on_delete: String = r.get(6).map_err(|e| sq(e, table))?;
        let fk = by_id.entry(id).or_insert_with(|| SourceForeignKey {
            id,
            columns: Vec::new(),
            parent,
            parent_columns: Vec::new(),
            on_delete,
            on_update,
        });
        fk.columns.push(from);
        if let Some(to) = to {
            fk.parent_columns.push(to);
        }
    }
    Ok(by_id.into_values().collect())
}

/// The WHERE clause of a CREATE INDEX statement (a partial index), found outside quotes and
/// parentheses.
pub fn extract_where(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' | b'`' | b'[' => i = quoted_end(b, i),
            b'(' => depth += 1,
            b')' => depth -= 1,
            c if depth == 0
                && (c == b'W' || c == b'w')
                && sql
                    .get(i..i + 5)
                    .is_some_and(|w| w.eq_ignore_ascii_case("where"))
                && (i == 0 || !is_word(b[i - 1]))
                && b.get(i + 5).is_none_or(|c| !is_word(*c)) =>
            {
                return Some(sql[i + 5..].trim().trim_end_matches(';').trim().to_string());
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The key terms of a CREATE INDEX statement as SQL text, each without its ASC or DESC:
/// `lower(email)`, `"a b" COLLATE NOCASE`. `None` when the text has no term list.
pub fn index_terms(sql: &str) -> Option<Vec<String>> {
    let b = sql.as_bytes();
    let (mut depth, mut i, mut start, mut terms) = (0i32, 0usize, None, Vec::new());
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' | b'`' | b'[' => i = quoted_end(b, i),
            b'(' => {
                depth += 1;
                if depth == 1 && start.is_none() {
                    start = Some(i + 1);
                }
            }
            b')' => {
                depth -= 1;
                if depth == 0 {
                    terms.push(strip_order(&sql[start?..i]));
                    return Some(terms);
                }
            }
            b',' if depth == 1 => {
                terms.push(strip_order(&sql[start?..i]));
                start = Some(i + 1);
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// A term without a trailing ASC or DESC (a whole word outside quotes at its end).
fn strip_order(term: &str) -> String {
    let t = term.trim();
    for word in ["ASC", "DESC"] {
        let n = word.len();
        if t.len() > n
            && t.is_char_boundary(t.len() - n)
            && t[t.len() - n..].eq_ignore_ascii_case(word)
            && !is_word(t.as_bytes()[t.len() - n - 1])
        {
            return t[..t.len() - n].trim_end().to_string();
        }
    }
    t.to_string()
}

/// The index of the character closing the quoted name or string that opens at `i` (`'`, `"`,
/// `` ` `` with doubling, or `[...]`), or the end of the text.
fn quoted_end(b: &[u8], mut i: usize) -> usize {
    let close = if b[i] == b'[' { b']' } else { b[i] };
    i += 1;
    while i < b.len() {
        if b[i] == close {
            if close != b']' && b.get(i + 1) == Some(&close) {
                i += 1;
            } else {
                break;
            }
        }
        i += 1;
    }
    i
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// The shape of a schema: each table with its columns and declared types. Two reads of the
/// same schema give the same shape; any table or column the app adds, drops or renames changes it.
pub fn shape(tables: &[SourceTable]) -> Vec<(String, Vec<(String, String)>)> {
    tables
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.columns
                    .iter()
                    .map(|c| (c.name.clone(), c.decl_type.clone()))
                    .collect(),
            )
        })
        .collect()
}

/// Counts a table's rows (for progress and reports).
pub fn count_rows(conn: &Connection, table: &str) -> Result<u64> {
    conn.query_row(
        &format!("SELECT count(*) FROM {}", quote_ident(table)),
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
    .map_err(|e| Error::from_sqlite(format!("cannot count the rows of table {table}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_index_terms_through_quotes_and_nesting() {
        assert_eq!(
            index_terms(
                "CREATE UNIQUE INDEX \"a(b\" ON \"t,(x\" (lower(email), \"a b\" COLLATE NOCASE DESC, substr(x, 1, 2) asc) WHERE y IN (1, 2)"
            ),
            Some(vec![
                "lower(email)".to_string(),
                "\"a b\" COLLATE NOCASE".to_string(),
                "substr(x, 1, 2)".to_string()
            ])
        );
        assert_eq!(
            index_terms("CREATE UNIQUE INDEX i ON t (\"x desc\", [c)], 'a,b' || y)"),
            Some(vec![
                "\"x desc\"".to_string(),
                "[c)]".to_string(),
                "'a,b' || y".to_string()
            ])
        );
        assert_eq!(index_terms("CREATE INDEX i ON t"), None);
    }

    #[test]
    fn finds_partial_index_where() {
        assert_eq!(
            extract_where("CREATE INDEX ix ON t (a) WHERE deleted_at IS NULL").as_deref(),
            Some("deleted_at IS NULL")
        );
        assert_eq!(
            extract_where("CREATE INDEX \"where\" ON t (\"where\")"),
            None
        );
        assert_eq!(
            extract_where("CREATE UNIQUE INDEX ix ON t (lower(a)) where (b = 'x where y');")
                .as_deref(),
            Some("(b = 'x where y')")
        );
    }
}
