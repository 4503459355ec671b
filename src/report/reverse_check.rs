//! `check --reverse`: what would not come back to SQLite exactly as the app wrote it, before a
//! fallback needs it. Each column's form (learned from SQLite) says how values come back;
//! every value Postgres holds now is decoded and proved to convert back to itself.

use std::collections::BTreeMap;

use bytes::BytesMut;
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::form::{Class, ColumnForm};
use crate::model::PgType;
use crate::pg::scan::Raw;
use crate::pg::{decode, qualified, quote_ident};
use crate::plan::Plan;
use crate::replicate::reverse_stream::{self, Table};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// How values come back; nothing is lost.
    Note,
    /// Values come back equal but not byte for byte (the app reads the same value).
    Warning,
    /// Values that cannot come back: the reverse stream stops on them.
    Error,
}

/// One finding about one column.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Source table.
    pub table: String,
    /// Source column.
    pub column: String,
    /// Note, warning or error.
    pub severity: Severity,
    /// What, and what to do.
    pub message: String,
    /// Values affected now (errors only).
    pub count: u64,
    /// A few of them.
    pub examples: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Rows of Postgres read and proved.
    pub rows_checked: u64,
    /// Findings, errors first.
    pub findings: Vec<Finding>,
}

impl Report {
    /// No value that cannot come back.
    pub fn is_clean(&self) -> bool {
        !self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

fn example_time(form: &ColumnForm, ty: &PgType) -> String {
    let time = form.date.time(34_200_000_000);
    match ty {
        PgType::Date => "2024-05-01".into(),
        PgType::Time { .. } => time,
        _ => format!("2024-05-01{}{time}", form.date.separator),
    }
}

/// What each column's form implies, without reading a value.
fn form_findings(t: &Table<'_>, out: &mut Vec<Finding>) {
    for (i, f) in t.forms().iter().enumerate() {
        let c = t.column(i);
        let mut add = |severity, message: String| {
            out.push(Finding {
                table: t.plan().source.name.clone(),
                column: c.source.clone(),
                severity,
                message,
                count: 0,
                examples: Vec::new(),
            })
        };
        match &c.conv.ty {
            PgType::Jsonb => add(
                if f.json.is_some() { Severity::Note } else { Severity::Warning },
                match &f.json {
                    Some(j) => format!(
                        "jsonb keeps the value, not the text: JSON changed on Postgres comes back written as SQLite's values are ({}, {}, keys in the app's order), so lookups by JSON text still match; a number comes back in Postgres' spelling (1e-07 as 0.0000001) and a key SQLite never held after the others",
                        if j.spaced { "`, ` and `: `" } else { "`,` and `:`" },
                        if j.ascii_only { "non-ASCII as \\uXXXX" } else { "non-ASCII as is" }
                    ),
                    None => "jsonb keeps the value, not the text: SQLite holds no JSON here to learn the app's form from, so JSON changed on Postgres comes back in Postgres' (keys ordered by length, `, ` and `: `). The app's JSON parser reads the same value; a comparison of the text would differ".into(),
                },
            ),
            PgType::Bpchar { .. } => add(
                Severity::Warning,
                "character(n) pads with spaces: text changed on Postgres comes back padded".into(),
            ),
            ty @ (PgType::Date | PgType::Time { .. } | PgType::Timestamp { .. } | PgType::Timestamptz { .. })
                if c.conv.encoding.is_none() && f.class == Some(Class::Text) =>
            {
                add(
                    Severity::Note,
                    format!("dates come back as SQLite holds them, like {}", example_time(f, ty)),
                );
                if f.mixed_date_forms {
                    add(Severity::Warning, "SQLite holds this column's dates in more than one text form; changed ones come back in the first form seen".into());
                }
                if f.local_offsets {
                    add(Severity::Warning, "SQLite holds times with a local UTC offset (`+02:00`); changed ones come back in UTC (`+00:00`), the same instant".into());
                }
            }
            PgType::Numeric { .. } if f.class == Some(Class::Real) => add(
                Severity::Note,
                "SQLite holds these numbers as REAL: a value written on Postgres with more digits than a double keeps cannot come back (listed below if any exists now)".into(),
            ),
            _ => {}
        }
    }
}

/// Learns every column's form, then reads every row Postgres holds and proves each value
/// comes back to itself.
pub async fn run(
    client: &mut Client,
    plan: &Plan,
    conn: &rusqlite::Connection,
    schema: &str,
) -> Result<Report> {
    let tables = tokio::task::block_in_place(|| reverse_stream::tables(plan, conn))?;
    let mut findings = Vec::new();
    let mut rows_checked = 0;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| Error::from_pg("cannot start reading Postgres", e))?;
    let mut scratch = BytesMut::new();
    for t in &tables {
        form_findings(t, &mut findings);
        let cols: Vec<String> = (0..t.forms().len())
            .map(|i| quote_ident(&t.column(i).target))
            .collect();
        let sql = format!(
            "SELECT {} FROM {}",
            cols.join(", "),
            qualified(schema, &t.plan().target)
        );
        let portal = tx
            .bind(sql.as_str(), &[])
            .await
            .map_err(|e| Error::from_pg(format!("cannot read table {}", t.plan().target), e))?;
        let mut bad: BTreeMap<usize, (u64, Vec<String>)> = BTreeMap::new();
        loop {
            let rows = tx
                .query_portal(&portal, 5_000)
                .await
                .map_err(|e| Error::from_pg(format!("cannot read table {}", t.plan().target), e))?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                rows_checked += 1;
                for i in 0..cols.len() {
                    let Raw(Some(bytes)) = r.get::<_, Raw>(i) else {
                        continue;
                    };
                    if let Err(e) =
                        decode::decode_exact(&bytes, &t.column(i).conv, &t.forms()[i], &mut scratch)
                    {
                        let entry = bad.entry(i).or_default();
                        entry.0 += 1;
                        if entry.1.len() < 3 {
                            entry.1.push(e.detail);
                        }
                    }
                }
            }
        }
        for (i, (count, examples)) in bad {
            findings.push(Finding {
                table: t.plan().source.name.clone(),
                column: t.column(i).source.clone(),
                severity: Severity::Error,
                message: "values on Postgres that cannot come back to SQLite exactly: the reverse stream stops on them. Change them on Postgres (or accept the loss by hand) before a fallback".into(),
                count,
                examples,
            });
        }
    }
    tx.commit()
        .await
        .map_err(|e| Error::from_pg("cannot end reading Postgres", e))?;
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.table.cmp(&b.table)));
    Ok(Report {
        rows_checked,
        findings,
    })
}

/// Prints the report for a person.
pub fn print_human(r: &Report, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "back to SQLite: {} rows of Postgres read, every value proved to convert back to itself or listed here",
        r.rows_checked
    )?;
    for f in &r.findings {
        let sev = match f.severity {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "ERROR",
        };
        let count = if f.count > 0 {
            format!(" ({} values)", f.count)
        } else {
            String::new()
        };
        writeln!(
            out,
            "  {sev:<7} {}.{}{count}: {}",
            f.table, f.column, f.message
        )?;
        for e in &f.examples {
            writeln!(out, "          e.g. {e}")?;
        }
    }
    if r.is_clean() {
        writeln!(out, "every value on Postgres can come back to SQLite")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_times_follow_the_columns_form() {
        let f = ColumnForm {
            date: crate::form::DateTemplate {
                separator: 'T',
                seconds: true,
                fraction: crate::form::Fraction::Fixed(3),
                suffix: crate::form::Suffix::Z,
            },
            ..ColumnForm::default()
        };
        assert_eq!(
            example_time(&f, &PgType::Timestamp { precision: None }),
            "2024-05-01T09:30:00.000Z"
        );
        assert_eq!(example_time(&f, &PgType::Date), "2024-05-01");
    }
}
