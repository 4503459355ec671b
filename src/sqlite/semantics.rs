//! What the app's schema makes SQLite do beyond holding values: CHECK constraints, collations
//! that change how values compare (NOCASE, RTRIM), generated columns, views, and the app's own
//! triggers, read with a real SQL parser (`sqlparser`), not by searching the text. The plan
//! carries what translates exactly (`crate::expr`); `check` and `cutover` name the rest.

use rusqlite::Connection;
use sqlparser::ast::{ColumnOption, Expr, Statement, TableConstraint};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

use super::capture;
use crate::error::{Error, Result};
use crate::model::{SourceTable, TableKind};

/// What kind of behaviour an object gives the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A CHECK constraint: SQLite refuses rows that break it.
    Check,
    /// A unique index or key that compares under NOCASE or RTRIM.
    UniqueCollation,
    /// A column declared with NOCASE or RTRIM: `=`, ORDER BY and GROUP BY use it.
    ColumnCollation,
    /// A view.
    View,
    /// One of the app's triggers.
    Trigger,
    /// A CREATE TABLE the parser could not read: what it holds is not listed.
    Unreadable,
}

/// One such object.
#[derive(Debug, Clone)]
pub struct AppObject {
    /// Its kind.
    pub kind: Kind,
    /// The table it belongs to (a view: its own name).
    pub table: String,
    /// The column, for collations.
    pub column: Option<String>,
    /// Its name, or what it is (a CHECK's expression, a collation's name).
    pub name: String,
    /// Its SQL as SQLite holds it.
    pub sql: String,
}

fn sqlite_err(what: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::from_sqlite(format!("cannot read {what}"), e)
}

/// Every such object in the file, for the tables given (views and triggers of any table).
pub fn read<'a>(
    conn: &Connection,
    tables: impl IntoIterator<Item = &'a SourceTable>,
) -> Result<Vec<AppObject>> {
    let mut out = Vec::new();
    for t in tables.into_iter().filter(|t| t.kind == TableKind::Plain) {
        from_create_table(t, &mut out);
        unique_collations(conn, t, &mut out)?;
    }
    let mut stmt = conn
        .prepare(
            "SELECT type, name, tbl_name, sql FROM sqlite_master
             WHERE type IN ('view', 'trigger') AND sql IS NOT NULL AND substr(name, 1, ?1) <> ?2
             ORDER BY type, name",
        )
        .map_err(sqlite_err("the views and triggers"))?;
    let prefix = capture::TRIGGER_PREFIX;
    let rows = stmt
        .query_map(rusqlite::params![prefix.len() as i64, prefix], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sqlite_err("the views and triggers"))?;
    for (kind, name, table, sql) in rows {
        out.push(AppObject {
            kind: if kind == "view" {
                Kind::View
            } else {
                Kind::Trigger
            },
            table,
            column: None,
            name,
            sql,
        });
    }
    Ok(out)
}

/// A CHECK constraint as the CREATE TABLE declares it.
#[derive(Debug, Clone)]
pub struct CheckDecl {
    /// Its name (`CONSTRAINT name CHECK ...`), if it has one.
    pub name: Option<String>,
    /// The column it is declared on, for a column constraint.
    pub column: Option<String>,
    /// The expression.
    pub expr: Expr,
}

/// What a CREATE TABLE declares besides columns and keys: CHECKs and column collations.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// CHECK constraints, columns' first, in order.
    pub checks: Vec<CheckDecl>,
    /// (column, collation) for columns declared with COLLATE.
    pub collations: Vec<(String, String)>,
    /// (column, expression) for generated columns.
    pub generated: Vec<(String, Expr)>,
}

/// SQLite takes any run of words as a column's type (`BLOB SUB_TYPE TEXT` in schemas ported
/// from Firebird); sqlparser knows only SQL's. The CREATE TABLE with each run of two or more
/// words after a column's name written as one quoted name, or `None` when there is none. The
/// type itself is read from `PRAGMA table_info`, not from here.
fn join_type_words(sql: &str) -> Option<String> {
    use sqlparser::tokenizer::{Token, Tokenizer, Word};
    const STOP: &[&str] = &[
        "CONSTRAINT",
        "PRIMARY",
        "NOT",
        "NULL",
        "UNIQUE",
        "CHECK",
        "DEFAULT",
        "COLLATE",
        "REFERENCES",
        "GENERATED",
        "AS",
        "FOREIGN",
    ];
    let tokens = Tokenizer::new(&SQLiteDialect {}, sql).tokenize().ok()?;
    let word = |t: &Token| match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.clone()),
        _ => None,
    };
    let stop = |t: &Token| word(t).is_none_or(|w| STOP.iter().any(|s| s.eq_ignore_ascii_case(&w)));
    let mut out: Vec<Token> = Vec::new();
    let mut depth = 0;
    let mut changed = false;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        out.push(t.clone());
        i += 1;
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        let starts_column = depth == 1 && matches!(t, Token::LParen | Token::Comma);
        if !starts_column {
            continue;
        }
        // The column's name, then the words of its type.
        while i < tokens.len() && matches!(tokens[i], Token::Whitespace(_)) {
            out.push(tokens[i].clone());
            i += 1;
        }
        if i >= tokens.len() || (word(&tokens[i]).is_some() && stop(&tokens[i])) {
            continue;
        }
        out.push(tokens[i].clone());
        i += 1;
        let mut words = Vec::new();
        let mut j = i;
        loop {
            while j < tokens.len() && matches!(tokens[j], Token::Whitespace(_)) {
                j += 1;
            }
            match tokens.get(j) {
                Some(t) if !stop(t) => {
                    words.push(word(t).unwrap_or_default());
                    j += 1;
                }
                _ => break,
            }
        }
        if words.len() >= 2 {
            out.push(Token::Whitespace(sqlparser::tokenizer::Whitespace::Space));
            out.push(Token::Word(Word {
                value: words.join(" "),
                quote_style: Some('"'),
                keyword: sqlparser::keywords::Keyword::NoKeyword,
            }));
            i = j;
            changed = true;
        }
    }
    changed.then(|| out.iter().map(|t| t.to_string()).collect())
}

impl Declared {
    /// The collation `column` is declared with (BINARY when none, or one SQLite does not have).
    pub fn collation_of(&self, column: &str) -> crate::model::Collation {
        self.collations
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(column))
            .and_then(|(_, name)| crate::model::Collation::named(name))
            .unwrap_or(crate::model::Collation::Binary)
    }
}

/// Reads the CHECKs and collations of a CREATE TABLE; `Err` says why it cannot be parsed.
pub fn declared(sql: &str) -> std::result::Result<Declared, String> {
    let mut parsed = Parser::parse_sql(&SQLiteDialect {}, sql);
    if parsed.is_err()
        && let Some(joined) = join_type_words(sql)
        && let Ok(p) = Parser::parse_sql(&SQLiteDialect {}, &joined)
    {
        parsed = Ok(p);
    }
    let create = match parsed.as_deref() {
        Ok([Statement::CreateTable(c)]) => c,
        Err(e) => return Err(e.to_string()),
        Ok(_) => return Err("not one CREATE TABLE statement".into()),
    };
    let mut out = Declared::default();
    for col in &create.columns {
        for opt in &col.options {
            match &opt.option {
                ColumnOption::Check(c) => out.checks.push(CheckDecl {
                    name: opt.name.as_ref().map(|n| n.value.clone()),
                    column: Some(col.name.value.clone()),
                    expr: (*c.expr).clone(),
                }),
                ColumnOption::Collation(name) => out
                    .collations
                    .push((col.name.value.clone(), name.to_string())),
                ColumnOption::Generated {
                    generation_expr: Some(e),
                    ..
                } => out.generated.push((col.name.value.clone(), e.clone())),
                _ => {}
            }
        }
    }
    for c in &create.constraints {
        if let TableConstraint::Check(c) = c {
            out.checks.push(CheckDecl {
                name: c.name.as_ref().map(|n| n.value.clone()),
                column: None,
                expr: (*c.expr).clone(),
            });
        }
    }
    Ok(out)
}

/// CHECK constraints and declared collations, from the table's CREATE statement.
fn from_create_table(t: &SourceTable, out: &mut Vec<AppObject>) {
    let d = match declared(&t.sql) {
        Ok(d) => d,
        Err(why) => {
            out.push(AppObject {
                kind: Kind::Unreadable,
                table: t.name.clone(),
                column: None,
                name: why,
                sql: t.sql.clone(),
            });
            return;
        }
    };
    for c in d.checks {
        out.push(AppObject {
            kind: Kind::Check,
            table: t.name.clone(),
            column: c.column,
            name: c.expr.to_string(),
            sql: t.sql.clone(),
        });
    }
    for (column, name) in d.collations.into_iter().filter(|(_, n)| !is_binary(n)) {
        out.push(AppObject {
            kind: Kind::ColumnCollation,
            table: t.name.clone(),
            column: Some(column),
            name: name.to_uppercase(),
            sql: t.sql.clone(),
        });
    }
}

fn is_binary(collation: &str) -> bool {
    collation.trim_matches('"').eq_ignore_ascii_case("BINARY")
}

/// Unique indexes (keys and UNIQUE constraints included) whose columns compare under another
/// collation than BINARY: as SQLite keeps them, not as the column was declared.
fn unique_collations(conn: &Connection, t: &SourceTable, out: &mut Vec<AppObject>) -> Result<()> {
    let mut stmt = conn
        .prepare(
            "SELECT i.name, x.name, x.coll, m.sql FROM pragma_index_list(?1) AS i
             JOIN pragma_index_xinfo(i.name) AS x
             LEFT JOIN sqlite_master AS m ON m.type = 'index' AND m.name = i.name
             WHERE i.\"unique\" AND x.key AND x.name IS NOT NULL ORDER BY i.seq, x.seqno",
        )
        .map_err(sqlite_err("the unique indexes' collations"))?;
    let cols = stmt
        .query_map([&t.name], |r| {
            Ok((
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sqlite_err("the unique indexes' collations"))?;
    for (column, coll, sql) in cols.into_iter().filter(|(_, c, _)| !is_binary(c)) {
        out.push(AppObject {
            kind: Kind::UniqueCollation,
            table: t.name.clone(),
            column: Some(column),
            name: coll.to_uppercase(),
            sql: sql.unwrap_or_else(|| t.sql.clone()),
        });
    }
    Ok(())
}

/// The value SQLite stores when a row leaves out a column of type `decl_type` with default
/// `raw` (its affinity applied: `'0'` in an INTEGER column is the integer 0, `'"0"'` stays
/// text), asked of SQLite itself on a private in-memory database. `None` when SQLite cannot
/// make such a column there (a default that names something of the app's).
pub fn default_value(decl_type: &str, raw: &str) -> Option<crate::model::OwnedValue> {
    let conn = Connection::open_in_memory().ok()?;
    // The declared type and default are the app's own text, from its CREATE TABLE: SQLite
    // parsed them there, and a default is a constant expression with no side effect.
    conn.execute_batch(&format!(
        "CREATE TABLE d (c {decl_type} DEFAULT {raw}); INSERT INTO d DEFAULT VALUES;"
    ))
    .ok()?;
    conn.query_row("SELECT c FROM d", [], |r| {
        Ok(super::reader::to_sql_value(r.get_ref(0)?).to_owned_value())
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_of_several_words_does_not_hide_the_checks() {
        let d = declared(
            "CREATE TABLE film (id int NOT NULL, description BLOB SUB_TYPE TEXT DEFAULT NULL,
               rating VARCHAR(10) DEFAULT 'G', PRIMARY KEY (id),
               CONSTRAINT CHECK_rating CHECK (rating in ('G', 'PG')))",
        )
        .unwrap();
        assert_eq!(d.checks.len(), 1);
        assert_eq!(d.checks[0].name.as_deref(), Some("CHECK_rating"));
        assert!(join_type_words("CREATE TABLE t (a INTEGER, b TEXT)").is_none());
    }

    #[test]
    fn a_default_is_the_value_sqlite_stores() {
        use crate::model::OwnedValue;
        assert_eq!(
            default_value("INTEGER", "'\"0\"'"),
            Some(OwnedValue::Text(b"\"0\"".to_vec()))
        );
        assert_eq!(
            default_value("INTEGER", "'7'"),
            Some(OwnedValue::Integer(7))
        );
        assert_eq!(default_value("REAL", "' 1.5'"), Some(OwnedValue::Real(1.5)));
        assert_eq!(
            default_value("TEXT", "7"),
            Some(OwnedValue::Text(b"7".to_vec()))
        );
        assert_eq!(
            default_value("INTEGER", "(1 + 1)"),
            Some(OwnedValue::Integer(2))
        );
        assert_eq!(default_value("INTEGER", "no_such_function()"), None);
    }
}
