//! `check`: the pre-flight report. Every value goes through the same conversion the snapshot
//! uses, so what `check` passes, the snapshot writes.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use rusqlite::Connection;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{OwnedValue, SqlValue, display_key};
use crate::model::{PgType, ScanKey};
use crate::pg::catalog::Behaviours;
use crate::pg::convert::{self, ProblemKind};
use crate::plan::{Finding, Plan, Severity, TablePlan, Target};
use crate::sqlite::reader::{self, ScanQuery};
use crate::sqlite::{audit, quote_ident};

/// Examples kept per (table, column, kind).
const EXAMPLES: usize = 5;

/// One offending value.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// The row's key, e.g. `id=42`.
    pub key: String,
    /// The value as SQLite holds it.
    pub value: String,
    /// What is wrong with it.
    pub detail: String,
}

/// What `check` found wrong with a value or a row: a value the converter refuses, or what
/// only a look at the whole table shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    /// A value the converter refuses (or, as a warning, moves but flags).
    Value(ProblemKind),
    /// A foreign key value with no parent row.
    Orphan,
    /// A key value that the target's primary key or unique constraint rejects.
    DuplicateKey,
    /// NULL in a primary key column.
    NullKey,
    /// A row that breaks its table's CHECK constraint (let in by `ignore_check_constraints`).
    BreaksCheck,
    /// A date and time with a UTC offset bound for a `timestamp` column: it moves as its UTC
    /// instant, but Postgres ignores the offset of such a text the app writes later.
    UtcOffset,
}

impl FindingKind {
    /// Its name, as the report gives it (`precision`, `orphan`, ...).
    pub fn label(self) -> String {
        match self {
            FindingKind::Value(k) => serde_json::to_value(k)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            FindingKind::Orphan => "orphan".into(),
            FindingKind::DuplicateKey => "duplicate_key".into(),
            FindingKind::NullKey => "null_key".into(),
            FindingKind::BreaksCheck => "breaks_check".into(),
            FindingKind::UtcOffset => "utc_offset".into(),
        }
    }
}

impl Serialize for FindingKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.label())
    }
}

/// A group of values with the same problem in the same column.
#[derive(Debug, Clone, Serialize)]
pub struct ValueProblem {
    /// Error: the value would stop the run; warning: it moves exactly but deserves a look.
    pub severity: Severity,
    /// The kind.
    pub kind: FindingKind,
    /// Source table.
    pub table: String,
    /// Source column (or key columns for duplicates and orphans).
    pub column: String,
    /// How many rows.
    pub count: u64,
    /// The first few.
    pub examples: Vec<Example>,
    /// What to do.
    pub hint: String,
}

/// How one column maps.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnReport {
    /// Source column.
    pub source: String,
    /// SQLite declared type.
    pub declared: String,
    /// Target column.
    pub target: String,
    /// Target type.
    pub target_type: String,
    /// Notes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How one table maps.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// Source table.
    pub source: String,
    /// Target table.
    pub target: String,
    /// `create` (sqlite2pg creates it) or `existing`.
    pub mode: &'static str,
    /// Rows in SQLite.
    pub rows: u64,
    /// Column mapping.
    pub columns: Vec<ColumnReport>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Tables and their mapping.
    pub tables: Vec<TableReport>,
    /// Tables left out, with the reason.
    pub skipped: Vec<crate::plan::Skipped>,
    /// Target tables that have no source table.
    pub target_only: Vec<String>,
    /// Schema-level findings.
    pub findings: Vec<Finding>,
    /// Value-level problems.
    pub problems: Vec<ValueProblem>,
    /// Errors in all (findings and value problems).
    pub errors: usize,
    /// Warnings.
    pub warnings: usize,
    /// Of the warnings, things SQLite does for the app that Postgres will not (CHECK
    /// constraints, collations, views, the app's triggers).
    pub behaviours: usize,
    /// How many of them sqlite2pg carries to Postgres (CHECKs translated, NOCASE keys).
    pub behaviours_kept: usize,
}

impl Report {
    /// Clean when nothing would stop or alter the move.
    pub fn is_clean(&self) -> bool {
        self.errors == 0
    }

    /// Adds findings made elsewhere (on the target), counted like the report's own.
    pub fn add(&mut self, findings: Vec<Finding>) {
        for f in &findings {
            match f.severity {
                Severity::Error => self.errors += 1,
                Severity::Warning => self.warnings += 1,
                Severity::Info => {}
            }
        }
        self.findings.extend(findings);
    }
}

fn hint_for(kind: FindingKind) -> &'static str {
    let kind = match kind {
        FindingKind::Value(k) => k,
        FindingKind::Orphan => {
            return "SQLite accepted them (foreign keys are off) and Postgres holds them too while streaming; before cutover, delete them or point them at existing rows in SQLite, or cut over with --orphans keep (that foreign key then stays NOT VALID)";
        }
        FindingKind::DuplicateKey => {
            return "remove the duplicates in SQLite, or drop the unique constraint in the target";
        }
        FindingKind::NullKey => return "give those rows a key in SQLite, or delete them",
        FindingKind::UtcOffset => {
            return "--cast TABLE.COLUMN=timestamptz: Postgres then reads the offset of every value, the app's later writes too";
        }
        FindingKind::BreaksCheck => {
            return "SQLite let them in with PRAGMA ignore_check_constraints; Postgres refuses them. Fix or delete those rows in SQLite";
        }
    };
    match kind {
        ProblemKind::TypeMismatch => {
            "fix the values in SQLite, or give the column a type that holds them with --cast TABLE.COLUMN=text"
        }
        ProblemKind::NulByte => {
            "remove the NUL bytes in SQLite (replace(col, char(0), '')), or --cast the column to bytea"
        }
        ProblemKind::InvalidUtf8 => {
            "re-encode the text in SQLite as UTF-8, or --cast the column to bytea"
        }
        ProblemKind::OutOfRange => {
            "widen the column with --cast TABLE.COLUMN=bigint (or numeric), or fix the values"
        }
        ProblemKind::NonFinite => {
            "replace Infinity in SQLite, or --cast the column to double precision"
        }
        ProblemKind::BadDate => "fix or NULL the dates in SQLite, or --cast the column to text",
        ProblemKind::NumericDate => {
            "say how the numbers are meant with --cast TABLE.COLUMN=epoch_s|epoch_ms|epoch_us|julian"
        }
        ProblemKind::TooLong => {
            "widen the column with --cast TABLE.COLUMN=text, or shorten the values"
        }
        ProblemKind::Precision => {
            "--cast the column to a type that keeps the whole value (numeric, double precision, timestamp without a precision), or round the values in SQLite"
        }
        ProblemKind::BadJson => "fix the JSON in SQLite, or --cast the column to text",
        ProblemKind::NotEnumLabel => {
            "add the label to the enum type in Postgres, or fix the values in SQLite"
        }
        ProblemKind::BadUuid => "fix the values in SQLite, or --cast the column to text",
        ProblemKind::UnsupportedType => "change the target column's type",
    }
}

/// Scans every row of every planned table and assembles the report.
/// `target`: what the target schema already has (with `--target`), for the tables the app's
/// migrations made. `shared`: a tenant of a fleet's shared tables; `one_way`: its cutover
/// installs nothing on Postgres for a way back (`[fleet] one_way`, or the shared layout).
pub fn run(
    conn: &Connection,
    plan: &Plan,
    schema: &str,
    chunk_rows: usize,
    target: Option<&Behaviours>,
    shared: bool,
    one_way: bool,
) -> Result<Report> {
    let mut problems: Vec<ValueProblem> = Vec::new();
    let mut tables = Vec::new();
    for t in &plan.tables {
        let rows = scan_values(conn, t, chunk_rows, &mut problems)?;
        key_problems(conn, t, &mut problems)?;
        orphan_problems(conn, t, &mut problems)?;
        check_problems(conn, t, &mut problems)?;
        tables.push(TableReport {
            source: t.source.name.clone(),
            target: t.target.clone(),
            mode: match t.mode {
                Target::Create(_) => "create",
                Target::Existing => "existing",
            },
            rows,
            columns: t
                .columns
                .iter()
                .map(|c| ColumnReport {
                    source: c.source.clone(),
                    declared: c.decl_type.clone(),
                    target: c.target.clone(),
                    target_type: c.conv.ty.sql(),
                    note: c
                        .note
                        .clone()
                        .or_else(|| c.conv.encoding.map(|e| format!("read as {e:?}"))),
                })
                .collect(),
        });
    }
    let mut findings = plan.findings.clone();
    let behaviours = crate::sqlite::semantics::read(conn, plan.tables.iter().map(|t| &t.source))?;
    let views = crate::plan::views::translate(conn, plan, schema)?;
    let triggers = crate::plan::triggers::translate(conn, plan, schema)?;
    let mut behaviour_findings: Vec<Finding> = behaviours
        .iter()
        // Shared tables carry neither views nor triggers: said below, as what they cost.
        .filter(|o| {
            !(shared
                && matches!(
                    o.kind,
                    crate::sqlite::semantics::Kind::View | crate::sqlite::semantics::Kind::Trigger
                ))
        })
        .map(|o| behaviour_finding(o, plan, &views, &triggers, target))
        .collect();
    if shared {
        findings.push(crate::plan::shared::one_way());
        behaviour_findings.extend(crate::plan::shared::not_carried(&behaviours, plan));
    } else if one_way {
        findings.push(one_way_cutover());
        findings.extend(
            triggers
                .iter()
                .filter(|t| t.port.is_ok() && !t.app_table)
                .map(trigger_under_citus),
        );
    }
    let behaviours_kept = behaviour_findings
        .iter()
        .filter(|f| f.severity == Severity::Info)
        .count();
    let behaviour_count = behaviour_findings.len() - behaviours_kept;
    findings.extend(behaviour_findings);
    findings
        .sort_by(|a, b| (a.severity, &a.table, &a.column).cmp(&(b.severity, &b.table, &b.column)));
    problems.sort_by(|a, b| (&a.table, &a.column, a.kind).cmp(&(&b.table, &b.column, b.kind)));
    let count = |sev| {
        findings.iter().filter(|f| f.severity == sev).count()
            + problems.iter().filter(|p| p.severity == sev).count()
    };
    let (errors, warnings) = (count(Severity::Error), count(Severity::Warning));
    Ok(Report {
        tables,
        skipped: plan.skipped.clone(),
        target_only: plan.target_only.clone(),
        findings,
        problems,
        errors,
        warnings,
        behaviours: behaviour_count,
        behaviours_kept,
    })
}

/// What a one-way fleet's cutover (`[fleet] one_way`) leaves behind, said for every tenant
/// before it is too late to choose otherwise.
fn one_way_cutover() -> Finding {
    Finding {
        severity: Severity::Warning,
        table: String::new(),
        column: None,
        message: "the fleet says one_way = true: this tenant's cutover is one way (no capture and no fence on Postgres), so after it `fallback` and `check --reverse` refuse, and the app's writes on Postgres have no way back to SQLite".into(),
        hint: "for a tenant that needs a way back, cut it over while one_way is off (one_way = true is for Citus, which refuses the way back's triggers on distributed tables)".into(),
    }
}

/// An app trigger that a one-way cutover creates on Postgres: under Citus, what `one_way`
/// is for, a trigger on a distributed table is refused unless `citus.enable_unsafe_triggers`
/// is on.
fn trigger_under_citus(t: &crate::plan::triggers::TriggerPlan) -> Finding {
    Finding {
        severity: Severity::Warning,
        table: t.table.clone(),
        column: None,
        message: format!(
            "the app's trigger {} is created on Postgres by the cutover: under Citus (what one_way = true is for) a trigger on a distributed table is refused unless citus.enable_unsafe_triggers is on (docs/citus.md; Citus was not run here)",
            t.name
        ),
        hint: "on Citus, turn citus.enable_unsafe_triggers on before the cutover (the trigger then runs on the shard's worker), or do its work in the app and drop it from the SQLite file".into(),
    }
}

/// What SQLite does for the app, and whether Postgres will do it after the cutover: an INFO
/// for what sqlite2pg carries over, a WARNING with what to do for what it does not.
fn behaviour_finding(
    o: &crate::sqlite::semantics::AppObject,
    plan: &Plan,
    views: &[crate::plan::views::ViewPlan],
    triggers: &[crate::plan::triggers::TriggerPlan],
    target: Option<&Behaviours>,
) -> Finding {
    use crate::sqlite::semantics::Kind;
    let col = o.column.as_deref().unwrap_or("");
    let table = plan.tables.iter().find(|t| t.source.name == o.table);
    let spec = table.and_then(|t| t.spec());
    let finding = |severity, message, hint| Finding {
        severity,
        table: o.table.clone(),
        column: o.column.clone(),
        message,
        hint,
    };
    // A CHECK that only asks for valid JSON, on a column that is json or jsonb on Postgres:
    // the type refuses what the CHECK refuses, whoever made the table.
    if o.kind == Kind::Check
        && let Some(t) = table
        && let Some(ty) = crate::framework::json_valid_column(&o.name).and_then(|col| {
            t.columns
                .iter()
                .find(|c| c.source.eq_ignore_ascii_case(&col))
                .map(|c| &c.conv.ty)
                .filter(|ty| matches!(ty, PgType::Json | PgType::Jsonb))
        })
    {
        return finding(
            Severity::Info,
            format!(
                "CHECK ({}): the column is {} on Postgres, which refuses text that is not JSON by itself",
                o.name,
                ty.sql()
            ),
            String::new(),
        );
    }
    if let Some(t) = table.filter(|t| matches!(t.mode, Target::Existing))
        && let Some(v) = on_app_table(o, t, triggers, target)
    {
        return finding(v.severity, v.message, v.hint);
    }
    if o.kind == Kind::View
        && let Some(on_pg) = target.and_then(|b| {
            let name = crate::pg::ddl::truncate_ident(&o.name);
            b.views.iter().find(|v| **v == name)
        })
    {
        return finding(
            Severity::Info,
            format!(
                "a view {on_pg} is on Postgres already (the app's migrations made it?): left as it is"
            ),
            String::new(),
        );
    }
    let mut severity = Severity::Warning;
    let (message, hint) = match o.kind {
        Kind::Check => match spec.and_then(|s| s.checks.iter().find(|c| c.source == o.name)) {
            Some(c) => match &c.pg {
                Ok(pg) => {
                    severity = Severity::Info;
                    (
                        format!("CHECK ({}) becomes CHECK ({pg}) on Postgres, as {}: added NOT VALID after the load, then validated", o.name, c.name),
                        String::new(),
                    )
                }
                Err(why) => (
                    format!("CHECK ({}) is not created on Postgres: {why}. After the cutover Postgres accepts rows SQLite refuses", o.name),
                    "add it on Postgres by hand, written in Postgres' SQL (ALTER TABLE ... ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT)".into(),
                ),
            },
            _ => (
                format!("CHECK ({}): the Postgres table is the app's own (its migrations made it), and sqlite2pg adds nothing to it", o.name),
                "make sure the app's migration declares this CHECK on Postgres, or Postgres accepts rows SQLite refuses".into(),
            ),
        },
        Kind::UniqueCollation if spec.is_some() && crate::model::Collation::named(&o.name).is_some() => {
            severity = Severity::Info;
            (
                format!(
                    "unique under COLLATE {} in SQLite: Postgres gets a unique index on the {} value, so it refuses the same duplicates. Its `=` and ORDER BY on this column stay case- and space-sensitive",
                    o.name,
                    if o.name.eq_ignore_ascii_case("NOCASE") { "ASCII-lower-cased" } else { "right-trimmed" }
                ),
                String::new(),
            )
        }
        Kind::UniqueCollation => (
            format!(
                "unique under COLLATE {} in SQLite; Postgres compares case- and space-sensitively, so after the cutover the app can store values SQLite held as duplicates (`A@x.org` beside `a@x.org`)",
                o.name
            ),
            format!(
                "on Postgres, a unique index on translate(\"{col}\", 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') (NOCASE folds ASCII letters only), in the app's migration"
            ),
        ),
        Kind::ColumnCollation => (
            format!(
                "declared COLLATE {}: SQLite's =, ORDER BY and GROUP BY ignore ASCII case (RTRIM: trailing spaces) here; Postgres' do not",
                o.name
            ),
            "queries that rely on it compare translate(col, 'ABC..Z', 'abc..z') on Postgres".into(),
        ),
        Kind::View => match views.iter().find(|v| v.name == o.name).map(|v| &v.create) {
            Some(Ok(create)) => {
                severity = Severity::Info;
                (
                    format!("view is created on Postgres by `cutover`, before its fence (unless one of that name is there already): {create}"),
                    String::new(),
                )
            }
            Some(Err(why)) => (
                format!("view is not created on Postgres: {why}. Queries against it fail after the cutover"),
                format!("create it on Postgres by hand, in Postgres' SQL: {}", o.sql),
            ),
            None => (
                "view is not created on Postgres: queries against it fail after the cutover".into(),
                format!("create it on Postgres by hand, in Postgres' SQL: {}", o.sql),
            ),
        },
        Kind::Trigger => match triggers.iter().find(|t| t.name == o.name).map(|t| &t.port) {
            Some(Ok(p)) => {
                severity = Severity::Info;
                (
                    format!(
                        "the app's trigger {} is ported to PL/pgSQL and created by `cutover`, in the transaction that records it (unless one of that name is on the table already): {}",
                        o.name, p.trigger
                    ),
                    String::new(),
                )
            }
            Some(Err(why)) => (
                format!(
                    "the app's trigger {} is not created on Postgres: {why}. What it does stops after the cutover",
                    o.name
                ),
                format!("port it to a PL/pgSQL trigger by hand: {}", o.sql),
            ),
            None => (
                format!(
                    "the app's trigger {} is not created on Postgres: what it does stops after the cutover",
                    o.name
                ),
                format!("port it to a PL/pgSQL trigger by hand: {}", o.sql),
            ),
        },
        Kind::Unreadable => (
            format!(
                "its CREATE TABLE could not be parsed ({}): CHECK constraints and collations in it are not listed",
                o.name
            ),
            format!("read it by hand: {}", o.sql),
        ),
    };
    finding(severity, message, hint)
}

/// What a finding about one object says: how bad, what, and what to do.
struct Verdict {
    severity: Severity,
    message: String,
    hint: String,
}

fn verdict(severity: Severity, message: String, hint: String) -> Verdict {
    Verdict {
        severity,
        message,
        hint,
    }
}

/// The enum type (name, labels) of `t`'s column `column` on Postgres when it holds only words
/// in `words`.
fn enum_within<'t>(
    t: &'t TablePlan,
    column: &str,
    words: &[&str],
) -> Option<(&'t str, &'t [String])> {
    let c = t
        .columns
        .iter()
        .find(|c| c.source.eq_ignore_ascii_case(column))?;
    match &c.conv.ty {
        crate::model::PgType::Enum { name, labels }
            if labels.iter().all(|l| words.contains(&l.as_str())) =>
        {
            Some((name, labels))
        }
        _ => None,
    }
}

/// What SQLite does for the app on a table the app's migrations made on Postgres, where
/// sqlite2pg adds nothing: a note when the migration has it, a WARNING with the SQL to add
/// when it does not. `None` for kinds that do not depend on the table's owner.
fn on_app_table(
    o: &crate::sqlite::semantics::AppObject,
    t: &TablePlan,
    triggers: &[crate::plan::triggers::TriggerPlan],
    target: Option<&Behaviours>,
) -> Option<Verdict> {
    use crate::sqlite::semantics::Kind;
    let empty = Behaviours::default();
    let b = target.unwrap_or(&empty);
    let on_table = |tbl: &String| *tbl == t.target;
    let target_col = |source: &str| {
        t.columns
            .iter()
            .find(|c| c.source.eq_ignore_ascii_case(source))
            .map(|c| c.target.clone())
    };
    let qtable = crate::pg::quote_ident(&t.target);
    let owned = "the Postgres table is the app's own (its migrations made it; sqlite2pg adds nothing to it)";
    Some(match o.kind {
        Kind::Check => {
            let mut cols = check_columns(&o.name, t);
            cols.extend(o.column.as_deref().and_then(target_col));
            cols.sort();
            cols.dedup();
            let parsed = crate::expr::parse(&o.name);
            if let Some((name, labels)) = parsed
                .as_ref()
                .ok()
                .and_then(crate::expr::in_words)
                .and_then(|(col, words)| enum_within(t, col, &words))
            {
                // An enum type refuses every other label, NULL allowed, as the CHECK does.
                return Some(verdict(
                    Severity::Info,
                    format!(
                        "CHECK ({}): the column's enum type {name} on Postgres holds only those words ({}), so Postgres refuses what it refuses",
                        o.name,
                        labels.join(", ")
                    ),
                    String::new(),
                ));
            }
            let same = b.checks.iter().find(|(tbl, _, _, c)| {
                let mut c = c.clone();
                c.sort();
                on_table(tbl) && c == cols
            });
            match same {
                Some((_, name, def, _)) => verdict(
                    Severity::Info,
                    format!(
                        "CHECK ({}): the app's migration declares {def} ({name}) on the same column(s) on Postgres; compare the two",
                        o.name
                    ),
                    String::new(),
                ),
                None => {
                    let scope = crate::expr::Scope::table(&t.source.name, t.expr_columns());
                    let pg = crate::expr::parse(&o.name)
                        .and_then(|e| crate::expr::condition(&e, &scope));
                    verdict(
                        Severity::Warning,
                        format!(
                            "CHECK ({}): {owned}, and it has no CHECK on column(s) {}: after the cutover Postgres accepts rows SQLite refuses",
                            o.name,
                            cols.join(", ")
                        ),
                        match pg {
                            Ok(pg) => format!(
                                "add it in a migration: ALTER TABLE {qtable} ADD CHECK ({pg}) NOT VALID, then VALIDATE CONSTRAINT"
                            ),
                            Err(why) => format!(
                                "add it in a migration, in Postgres' SQL (sqlite2pg has no exact translation: {why})"
                            ),
                        },
                    )
                }
            }
        }
        Kind::UniqueCollation | Kind::ColumnCollation => {
            let col = target_col(o.column.as_deref().unwrap_or(""))?;
            let folded = b
                .folded_columns
                .iter()
                .any(|(tbl, c)| on_table(tbl) && *c == col);
            let mentions = |def: &str| {
                def.contains(&format!("({col})"))
                    || def.contains(&crate::pg::quote_ident(&col))
                    || def.contains(&format!("({col},"))
                    || def.contains(&format!(", {col})"))
            };
            let fold_fn = |def: &str| {
                let d = def.to_ascii_lowercase();
                ["lower(", "upper(", "translate(", "rtrim("]
                    .iter()
                    .any(|f| d.contains(f))
            };
            if o.kind == Kind::ColumnCollation {
                if !folded {
                    return None;
                }
                return Some(verdict(
                    Severity::Info,
                    format!(
                        "declared COLLATE {}; the app's migration makes {col} compare without case on Postgres (citext or a nondeterministic collation), which also folds non-ASCII letters, unlike NOCASE",
                        o.name
                    ),
                    String::new(),
                ));
            }
            let index = b
                .unique_indexes
                .iter()
                .find(|(tbl, _, def)| on_table(tbl) && mentions(def) && (folded || fold_fn(def)));
            match index {
                Some((_, name, def)) => verdict(
                    Severity::Info,
                    format!(
                        "unique under COLLATE {} in SQLite; the app's migration has {name}: {def}. If it folds with lower() or citext, it also folds non-ASCII letters (É and é), which NOCASE keeps apart",
                        o.name
                    ),
                    String::new(),
                ),
                None => verdict(
                    Severity::Warning,
                    format!(
                        "unique under COLLATE {} in SQLite; {owned}, and it has no unique index that folds {col}: after the cutover the app can store values SQLite held as duplicates",
                        o.name
                    ),
                    format!(
                        "add in a migration: CREATE UNIQUE INDEX ON {qtable} ({})",
                        crate::model::Collation::named(&o.name)
                            .unwrap_or(crate::model::Collation::Nocase)
                            .key(&crate::pg::quote_ident(&col))
                    ),
                ),
            }
        }
        Kind::Trigger => {
            let plan = triggers.iter().find(|p| p.name == o.name)?;
            let name = crate::pg::ddl::truncate_ident(&o.name);
            if b.triggers
                .iter()
                .any(|(tbl, n)| on_table(tbl) && *n == name)
            {
                return Some(verdict(
                    Severity::Info,
                    format!(
                        "the app's trigger {}: the app's migration made a trigger of that name on Postgres",
                        o.name
                    ),
                    String::new(),
                ));
            }
            verdict(
                Severity::Warning,
                format!(
                    "the app's trigger {} is not created on Postgres: {owned}. What it does stops after the cutover",
                    o.name
                ),
                match &plan.port {
                    Ok(p) => format!("add it in a migration: {}; {}", p.function, p.trigger),
                    Err(why) => format!("port it to PL/pgSQL in a migration ({why}): {}", o.sql),
                },
            )
        }
        Kind::View | Kind::Unreadable => return None,
    })
}

/// The target names of the table's columns an expression names.
fn check_columns(expr: &str, t: &TablePlan) -> Vec<String> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&sqlparser::dialect::SQLiteDialect {}, expr).tokenize() else {
        return Vec::new();
    };
    tokens
        .iter()
        .filter_map(|tok| match tok {
            Token::Word(w) => t
                .columns
                .iter()
                .find(|c| c.source.eq_ignore_ascii_case(&w.value))
                .map(|c| c.target.clone()),
            _ => None,
        })
        .collect()
}

fn record(
    problems: &mut Vec<ValueProblem>,
    table: &str,
    column: &str,
    kind: FindingKind,
    example: Example,
) {
    record_with(problems, Severity::Error, table, column, kind, example)
}

fn record_with(
    problems: &mut Vec<ValueProblem>,
    severity: Severity,
    table: &str,
    column: &str,
    kind: FindingKind,
    example: Example,
) {
    if let Some(p) = problems
        .iter_mut()
        .find(|p| p.table == table && p.column == column && p.kind == kind)
    {
        p.count += 1;
        if p.examples.len() < EXAMPLES {
            p.examples.push(example);
        }
        return;
    }
    problems.push(ValueProblem {
        severity,
        kind,
        table: table.to_string(),
        column: column.to_string(),
        count: 1,
        examples: vec![example],
        hint: hint_for(kind).to_string(),
    });
}

fn scan_values(
    conn: &Connection,
    t: &TablePlan,
    chunk_rows: usize,
    problems: &mut Vec<ValueProblem>,
) -> Result<u64> {
    let q = ScanQuery::new(&t.source, &t.source_columns());
    let klen = q.key_len();
    let mut after: Option<Vec<OwnedValue>> = None;
    let mut total = 0;
    let mut scratch = BytesMut::with_capacity(4096);
    loop {
        let read = reader::read_chunk(
            conn,
            &q,
            after.as_deref(),
            chunk_rows,
            Duration::from_millis(200),
            |row| {
                for (c, v) in t.columns.iter().zip(&row[klen..]) {
                    scratch.clear();
                    let key = || {
                        let key: Vec<OwnedValue> =
                            row[..klen].iter().map(SqlValue::to_owned_value).collect();
                        display_key(&t.key_names, &key)
                    };
                    match convert::encode(*v, &c.conv, &mut scratch) {
                        Err(e) => {
                            let example = Example {
                                key: key(),
                                value: v.display(),
                                detail: e.detail,
                            };
                            record(
                                problems,
                                &t.source.name,
                                &c.source,
                                FindingKind::Value(e.kind),
                                example,
                            );
                        }
                        // Moves exactly, but many apps and JSON encoders choke on it: worth a look.
                        Ok(()) if matches!(v, SqlValue::Real(f) if !f.is_finite()) => {
                            let example = Example {
                            key: key(),
                            value: v.display(),
                            detail: "Infinity is kept as Infinity in Postgres; check the app expects it".into(),
                        };
                            record_with(
                                problems,
                                Severity::Warning,
                                &t.source.name,
                                &c.source,
                                FindingKind::Value(ProblemKind::NonFinite),
                                example,
                            );
                        }
                        Ok(()) if with_offset(*v, &c.conv.ty) => {
                            let example = Example {
                                key: key(),
                                value: v.display(),
                                detail: "moves as its UTC instant, as SQLite's date functions read it; but after the cutover Postgres ignores the offset of such a text the app writes into a timestamp column, and keeps the local time".into(),
                            };
                            record_with(
                                problems,
                                Severity::Warning,
                                &t.source.name,
                                &c.source,
                                FindingKind::UtcOffset,
                                example,
                            );
                        }
                        Ok(()) => {}
                    }
                }
                Ok(())
            },
        )?;
        total += read.rows;
        if read.exhausted {
            break;
        }
        after = read.last_key;
    }
    Ok(total)
}

/// Whether `v` is a date and time with a UTC offset other than zero, bound for a timestamp
/// without time zone.
fn with_offset(v: SqlValue<'_>, ty: &PgType) -> bool {
    let SqlValue::Text(t) = v else {
        return false;
    };
    matches!(ty, PgType::Timestamp { .. })
        && std::str::from_utf8(t)
            .ok()
            .and_then(|s| crate::datetime::parse(s).ok())
            .is_some_and(|p| p.offset_secs.is_some_and(|o| o != 0))
}

/// NULLs in the primary key, and duplicates the target's unique keys would reject.
fn key_problems(conn: &Connection, t: &TablePlan, problems: &mut Vec<ValueProblem>) -> Result<()> {
    let table = &t.source.name;
    for (n, key) in t.unique_keys.iter().enumerate() {
        if key.is_empty() {
            continue;
        }
        let cols: Vec<&str> = key.iter().map(|i| t.columns[*i].source.as_str()).collect();
        let label = cols.join(", ");
        // SQLite lets NULL into a non-integer PRIMARY KEY of a rowid table; Postgres does not.
        let nullable_pk = n == 0
            && !t.source.primary_key.is_empty()
            && t.source.rowid_alias.is_none()
            && !t.source.without_rowid;
        if nullable_pk {
            for id in audit::null_key_rowids(conn, table, &cols, EXAMPLES)? {
                let example = Example {
                    key: format!("rowid={id}"),
                    value: "NULL".into(),
                    detail: "NULL in a primary key column, which Postgres rejects".into(),
                };
                record(problems, table, &label, FindingKind::NullKey, example);
            }
        }
        // Group the way the target compares: text targets compare the text form.
        let by: Vec<(&str, bool)> = key
            .iter()
            .map(|i| {
                let c = &t.columns[*i];
                let text = matches!(
                    c.conv.ty,
                    PgType::Text | PgType::Varchar { .. } | PgType::Bpchar { .. }
                );
                (c.source.as_str(), text)
            })
            .collect();
        let names: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
        let as_json = key.iter().any(|i| t.columns[*i].conv.ty == PgType::Jsonb);
        let groups = if as_json {
            // jsonb compares values: `{"a":1,"b":2}` is `{"b": 2, "a": 1}` there, two rows
            // in SQLite's textual unique index. Each value as the target would hold and
            // compare it.
            let canon = |i: usize, v: SqlValue<'_>| -> Option<Vec<u8>> {
                let conv = &t.columns[key[i]].conv;
                let mut out = bytes::BytesMut::new();
                convert::encode(v, conv, &mut out).ok()?;
                Some(convert::comparable(&conv.ty, out.get(4..)?).into_owned())
            };
            audit::duplicate_groups_by(conn, table, &cols, &canon, 100)?
        } else {
            audit::duplicate_groups(conn, table, &by, 100)?
        };
        for (vals, count) in groups {
            let example = Example {
                key: display_key(&names, &vals),
                value: format!("{count} rows"),
                detail: format!(
                    "{count} rows share this value{}, which the target's unique key on ({label}) rejects",
                    if as_json {
                        " (equal as JSON: jsonb ignores key order and spacing)"
                    } else {
                        ""
                    }
                ),
            };
            record(problems, table, &label, FindingKind::DuplicateKey, example);
        }
    }
    Ok(())
}

/// Rows whose foreign key points at no parent row (SQLite does not enforce foreign keys unless
/// the app turned them on).
fn orphan_problems(
    conn: &Connection,
    t: &TablePlan,
    problems: &mut Vec<ValueProblem>,
) -> Result<()> {
    if t.source.foreign_keys.is_empty() {
        return Ok(());
    }
    let table = &t.source.name;
    let mut examples_left: BTreeMap<i64, usize> = BTreeMap::new();
    for (rowid, fkid) in audit::foreign_key_violations(conn, table)? {
        let Some(fk) = t.source.foreign_keys.iter().find(|fk| fk.id == fkid) else {
            continue;
        };
        let label = fk.columns.join(", ");
        let left = examples_left.entry(fkid).or_insert(EXAMPLES);
        let parent_cols = if fk.parent_columns.is_empty() {
            "its primary key".to_string()
        } else {
            fk.parent_columns.join(", ")
        };
        // Read the offending rows for the first few only; the rest are counted.
        let (key, value) = match rowid {
            Some(id) if *left > 0 => {
                *left -= 1;
                let mut cols = t.key_names.clone();
                cols.extend(fk.columns.iter().cloned());
                let vals = audit::row_values(conn, table, id, &cols)?;
                let (k, v) = vals.split_at(t.key_names.len());
                (
                    display_key(&t.key_names, k),
                    v.iter()
                        .map(|v| v.as_ref().display())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            }
            Some(id) => (format!("rowid={id}"), String::new()),
            None => ("(WITHOUT ROWID row)".into(), String::new()),
        };
        let example = Example {
            key,
            value,
            detail: format!(
                "no row in {} has this value in {parent_cols} (orphaned foreign key; SQLite leaves foreign keys unenforced by default)",
                fk.parent
            ),
        };
        record_with(
            problems,
            Severity::Warning,
            table,
            &label,
            FindingKind::Orphan,
            example,
        );
    }
    Ok(())
}

/// Rows that break their table's CHECK constraints, read by SQLite itself: SQLite refuses
/// them unless the app turned `ignore_check_constraints` on, and Postgres always would.
fn check_problems(
    conn: &Connection,
    t: &TablePlan,
    problems: &mut Vec<ValueProblem>,
) -> Result<()> {
    let table = &t.source.name;
    let keys: Vec<String> = match t.source.scan_key() {
        ScanKey::Rowid => vec![t.source.rowid_name().to_string()],
        ScanKey::Columns(_) => t.key_names.iter().map(|k| quote_ident(k)).collect(),
    };
    let checks = t.spec().map_or(&[][..], |s| &s.checks[..]);
    for c in checks.iter().filter(|c| c.pg.is_ok()) {
        let sql = format!(
            "SELECT {} FROM {} WHERE NOT ({})",
            keys.join(", "),
            quote_ident(table),
            c.source
        );
        let what = || {
            format!(
                "cannot evaluate CHECK ({}) of table {table} in SQLite",
                c.source
            )
        };
        // The expression is printed back from the parsed form; where SQLite cannot read that
        // print, the rows go unchecked here and the snapshot's validation still catches them.
        let mut stmt = match conn.prepare(&sql) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(table = %table, check = %c.source, error = %e, "cannot evaluate this CHECK in SQLite; rows that break it are found when the snapshot validates it on Postgres");
                continue;
            }
        };
        let mut rows = stmt.query([]).map_err(|e| Error::from_sqlite(what(), e))?;
        while let Some(r) = rows.next().map_err(|e| Error::from_sqlite(what(), e))? {
            let key: Vec<OwnedValue> = (0..keys.len())
                .map(|i| {
                    r.get_ref(i)
                        .map(|v| reader::to_sql_value(v).to_owned_value())
                })
                .collect::<rusqlite::Result<_>>()
                .map_err(|e| Error::from_sqlite(what(), e))?;
            let example = Example {
                key: display_key(&t.key_names, &key),
                value: String::new(),
                detail: format!(
                    "breaks CHECK ({}), constraint {} on Postgres",
                    c.source, c.name
                ),
            };
            record(problems, table, "CHECK", FindingKind::BreaksCheck, example);
        }
    }
    Ok(())
}

/// Prints the report for a person.
pub fn print_human(report: &Report, out: &mut impl std::io::Write) -> std::io::Result<()> {
    for t in &report.tables {
        writeln!(
            out,
            "table {} -> {} ({}, {} rows)",
            t.source,
            t.target,
            if t.mode == "create" {
                "created by sqlite2pg"
            } else {
                "existing target table"
            },
            t.rows
        )?;
        for c in &t.columns {
            let declared = if c.declared.is_empty() {
                "(none)"
            } else {
                &c.declared
            };
            write!(
                out,
                "  {:<24} {:<18} -> {:<24} {}",
                c.source, declared, c.target, c.target_type
            )?;
            if let Some(n) = &c.note {
                write!(out, "  [{n}]")?;
            }
            writeln!(out)?;
        }
    }
    for s in &report.skipped {
        writeln!(out, "skipped {}: {}", s.table, s.reason)?;
    }
    if !report.target_only.is_empty() {
        writeln!(
            out,
            "left alone in the target (no source table): {}",
            report.target_only.join(", ")
        )?;
    }
    if !report.findings.is_empty() || !report.problems.is_empty() {
        writeln!(out)?;
    }
    for f in &report.findings {
        let sev = match f.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Info => "note",
        };
        let col = f
            .column
            .as_ref()
            .map(|c| format!(".{c}"))
            .unwrap_or_default();
        // A finding about the server, not a table, names none.
        let place = if f.table.is_empty() {
            String::new()
        } else {
            format!("{}{col}: ", f.table)
        };
        writeln!(out, "{sev}: {place}{}", f.message)?;
        if !f.hint.is_empty() {
            writeln!(out, "       fix: {}", f.hint)?;
        }
    }
    for p in &report.problems {
        if p.severity == Severity::Error {
            writeln!(
                out,
                "ERROR: {}.{}: {} value(s) would not survive ({})",
                p.table,
                p.column,
                p.count,
                p.kind.label()
            )?;
        } else {
            writeln!(
                out,
                "WARNING: {}.{}: {} value(s) worth a look ({})",
                p.table,
                p.column,
                p.count,
                p.kind.label()
            )?;
        }
        for e in &p.examples {
            writeln!(out, "       {}: {} -- {}", e.key, e.value, e.detail)?;
        }
        if p.count as usize > p.examples.len() {
            writeln!(
                out,
                "       ... and {} more",
                p.count as usize - p.examples.len()
            )?;
        }
        writeln!(out, "       fix: {}", p.hint)?;
    }
    writeln!(out)?;
    if report.is_clean() {
        writeln!(
            out,
            "check: clean ({} tables, {} warnings); the move will not lose or alter a value",
            report.tables.len(),
            report.warnings
        )?;
        if report.behaviours > 0 {
            writeln!(
                out,
                "but Postgres will not do {} thing(s) SQLite does for the app (CHECK constraints, collations, views, triggers: WARNINGs above)",
                report.behaviours
            )?;
        }
        if report.behaviours_kept > 0 {
            writeln!(
                out,
                "{} CHECK constraint(s), unique collation(s), view(s) and trigger(s) are carried to Postgres (notes above)",
                report.behaviours_kept
            )?;
        }
        Ok(())
    } else {
        writeln!(
            out,
            "check: {} error(s), {} warning(s); fix them (or --exclude the tables) before `sqlite2pg run`",
            report.errors, report.warnings
        )
    }
}

/// For `check`: each table whose seeded rows `run` replaces, and whether they agree with
/// SQLite's rows already (compared row by row, as verify compares).
pub async fn seeded_findings(
    client: &mut tokio_postgres::Client,
    plan: &Plan,
    cfg: &crate::config::Config,
) -> Result<Vec<Finding>> {
    let seeded =
        crate::plan::migrations::seeded(client, plan, cfg.tenant_id(), &cfg.target_schema).await?;
    let mut out = Vec::new();
    for s in seeded {
        let opts = crate::verify::Options {
            db: crate::replicate::Databases::of(cfg)?,
            examples: 0,
            tables: vec![s.table.clone()],
            settle: std::time::Duration::ZERO,
        };
        let report = crate::verify::run(client, plan, &opts).await?;
        let agreement = match report.tables.first() {
            Some(r) if report.equal => {
                format!("they agree with SQLite's {} row by row", r.rows_compared)
            }
            Some(r) => format!(
                "against SQLite's {} rows: {} missing on Postgres, {} only on Postgres, {} different",
                r.rows_compared, r.missing_in_postgres, r.extra_in_postgres, r.differing
            ),
            None => String::new(),
        };
        out.push(Finding {
            severity: Severity::Info,
            table: s.table.clone(),
            column: None,
            message: format!(
                "target table {} already holds {} row(s) (seeded by the app's migrations?); `run` replaces them with SQLite's rows, whose ids SQLite's foreign keys point at; {agreement}",
                s.target, s.rows
            ),
            hint: String::new(),
        });
    }
    Ok(out)
}
