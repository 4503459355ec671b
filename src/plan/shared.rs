//! The plan of a fleet's shared-tables layout: every table sqlite2pg creates holds all the
//! tenants' rows, with the tenant column leading its primary key, every index and every
//! foreign key, so ids stay each tenant's own (and Citus can distribute the table by that
//! column). The tables are made by the first tenant and taken as they are by the others: a
//! tenant whose tables differ from them (one migrated, another not yet) is named, and waits.

use super::{Finding, Severity, TablePlan, TableSpec};
use crate::model::{Collation, PgType};
use crate::pg::catalog::TargetTable;
use crate::pg::ddl::ColumnDef;
use crate::sqlite::semantics::{AppObject, Kind};

/// `spec` with the tenant column first, leading its primary key, indexes and foreign keys.
pub fn lead_with(spec: &mut TableSpec, column: &str) {
    spec.column_defs.insert(
        0,
        ColumnDef {
            name: column.to_string(),
            ty: PgType::Text,
            not_null: true,
            default: None,
            identity: false,
            generated: None,
        },
    );
    if !spec.primary_key.is_empty() {
        spec.primary_key.insert(0, column.to_string());
    }
    for ix in &mut spec.indexes {
        ix.columns.insert(0, (column.to_string(), false));
        if !ix.collations.is_empty() {
            ix.collations.insert(0, Collation::Binary);
        }
        if !ix.expressions.is_empty() {
            ix.expressions.insert(0, None);
        }
    }
    for fk in &mut spec.foreign_keys {
        fk.columns.insert(0, column.to_string());
        fk.parent_columns.insert(0, column.to_string());
    }
}

/// The source columns that cannot share a table with the tenant column: one of that name.
pub fn clash(t: &TablePlan, column: &str) -> Option<Finding> {
    let c = t
        .columns
        .iter()
        .find(|c| c.target.eq_ignore_ascii_case(column))?;
    Some(Finding {
        severity: Severity::Error,
        table: t.source.name.clone(),
        column: Some(c.source.clone()),
        message: format!(
            "the fleet's tenant column is named {column}, like this column of the app's"
        ),
        hint: "name the tenant column otherwise in [fleet] (tenant_column = \"...\")".into(),
    })
}

/// How this tenant's table (`spec`, led by the tenant column) differs from the shared table
/// `shared` another tenant's file made: each difference that would lose or refuse its rows is
/// an error (the run waits for this tenant until the tables agree), a column only the shared
/// table has is a warning (this tenant's rows hold NULL or its default there).
pub fn differences(
    source: &str,
    spec: &TableSpec,
    shared: &TargetTable,
    schema: &str,
) -> Vec<Finding> {
    let table = crate::pg::qualified(schema, &shared.name);
    let mut out = Vec::new();
    let error = |out: &mut Vec<Finding>, column: Option<&str>, message: String, hint: String| {
        out.push(Finding {
            severity: Severity::Error,
            table: source.to_string(),
            column: column.map(str::to_string),
            message,
            hint,
        })
    };
    let migrate = "the tenants' files are at different migrations: migrate this tenant's file like the others, or change the shared table by hand so that it holds both";
    for c in &spec.column_defs {
        match shared.columns.iter().find(|s| s.name == c.name) {
            None => error(
                &mut out,
                Some(&c.name),
                format!(
                    "the shared table {table} has no column {}: another tenant's file made it without one",
                    c.name
                ),
                format!(
                    "{migrate} (ALTER TABLE {table} ADD COLUMN {} {}, nullable); this tenant goes on by itself once they agree",
                    crate::pg::quote_ident(&c.name),
                    c.ty.sql()
                ),
            ),
            Some(s) if s.ty != c.ty => error(
                &mut out,
                Some(&c.name),
                format!(
                    "column {} is {} in the shared table {table}, and {} in this tenant's file",
                    c.name,
                    s.ty.sql(),
                    c.ty.sql()
                ),
                migrate.to_string(),
            ),
            Some(s) if s.generated != c.generated.is_some() => error(
                &mut out,
                Some(&c.name),
                format!(
                    "column {} is generated on one side only: in the shared table {table} or in this tenant's file",
                    c.name
                ),
                migrate.to_string(),
            ),
            Some(_) => {}
        }
    }
    let shared_key: Option<&Vec<String>> = shared
        .has_primary_key
        .then(|| shared.unique_keys.first())
        .flatten();
    let same_key = match shared_key {
        Some(k) => *k == spec.primary_key,
        None => spec.primary_key.is_empty(),
    };
    // A table still being loaded by its first tenant has no key yet either.
    if !same_key && shared_key.is_some() {
        error(
            &mut out,
            None,
            format!(
                "its primary key ({}) is not the shared table {table}'s ({})",
                spec.primary_key.join(", "),
                shared_key.map(|k| k.join(", ")).unwrap_or_default()
            ),
            migrate.to_string(),
        );
    }
    for s in &shared.columns {
        if spec.column_defs.iter().any(|c| c.name == s.name) {
            continue;
        }
        if s.not_null && !s.has_default {
            error(
                &mut out,
                Some(&s.name),
                format!(
                    "the shared table {table} has column {} NOT NULL without a default, which this tenant's file lacks: its rows could not be written",
                    s.name
                ),
                migrate.to_string(),
            );
        } else {
            out.push(Finding {
                severity: Severity::Warning,
                table: source.to_string(),
                column: Some(s.name.clone()),
                message: format!(
                    "the shared table {table} has column {}, which this tenant's file lacks (another tenant's migration added it): this tenant's rows hold {} there",
                    s.name,
                    if s.has_default { "its default" } else { "NULL" }
                ),
                hint: "nothing to do if the app of this tenant is at the older migration; migrate its file to match the others".into(),
            });
        }
    }
    out
}

/// A table in the shared schema that sqlite2pg did not make: the layout's tables are its own.
pub fn not_ours(source: &str, schema: &str, target: &str) -> Finding {
    Finding {
        severity: Severity::Error,
        table: source.to_string(),
        column: None,
        message: format!(
            "table {} already exists and sqlite2pg did not create it: in the shared-tables layout sqlite2pg creates every table, with the tenant column leading its keys",
            crate::pg::qualified(schema, target)
        ),
        hint: "give the fleet a schema of its own (schema = \"...\" in [fleet]), or drop the table if it is a leftover".into(),
    }
}

/// What a cutover of the shared-tables layout leaves behind, said by `check` for every tenant.
pub fn one_way() -> Finding {
    Finding {
        severity: Severity::Warning,
        table: String::new(),
        column: None,
        message: "in the shared-tables layout a tenant's cutover is one way: no capture on Postgres, no fallback; foreign keys stay kept aside (a key on a shared table holds for every tenant's rows), so Postgres accepts a row whose parent is missing where SQLite with foreign_keys=ON would refuse it".into(),
        hint: "after its cutover the tenant's app names its tenant in every statement on Postgres; for a tenant that needs a way back, use layout = \"schemas\"".into(),
    }
}

/// What the app of a tenant would miss on Postgres after a one-way cutover to shared tables:
/// its triggers would not fire and its views would not exist (on shared tables they would
/// fire for and read every tenant's rows), errors on which the cutover refuses; and a foreign
/// key's ON DELETE or ON UPDATE action would not run while the keys stay aside, a warning,
/// since SQLite runs it only for an app that turns foreign_keys on. `objects` are the app's
/// own, as [`crate::sqlite::semantics::read`] lists them (sqlite2pg's capture triggers left out).
pub fn not_carried(objects: &[AppObject], plan: &super::Plan) -> Vec<Finding> {
    let hint = "do its work in the app and drop it from the SQLite file (the stream follows), or move this app with layout = \"schemas\", whose cutover carries it";
    let mut out: Vec<Finding> = objects
        .iter()
        .filter_map(|o| {
            let message = match o.kind {
                Kind::Trigger => format!("the app's trigger {} is not carried to shared tables: after the cutover it would not fire for this tenant's writes on Postgres, and the app would answer differently", o.name),
                Kind::View => format!("the app's view {} is not carried to shared tables: after the cutover the app's queries on it would fail on Postgres", o.name),
                _ => return None,
            };
            Some(Finding {
                severity: Severity::Error,
                // A trigger's table; a view's own name.
                table: o.table.clone(),
                column: None,
                message,
                hint: hint.into(),
            })
        })
        .collect();
    for t in &plan.tables {
        for fk in &t.source.foreign_keys {
            let acts = |a: &str| !matches!(a, "" | "NO ACTION" | "RESTRICT");
            for (when, action) in [("DELETE", &fk.on_delete), ("UPDATE", &fk.on_update)] {
                if acts(action) {
                    out.push(Finding {
                        severity: Severity::Warning,
                        table: t.source.name.clone(),
                        column: fk.columns.first().cloned(),
                        message: format!(
                            "the foreign key ({}) to {} has ON {when} {action}: on shared tables the keys stay kept aside, so after the cutover that action would not run for this tenant's writes on Postgres (SQLite runs it only when the app turns foreign_keys on)",
                            fk.columns.join(", "),
                            fk.parent
                        ),
                        hint: "if the app turns foreign_keys on, do the action in the app, or move this app with layout = \"schemas\"".into(),
                    });
                }
            }
        }
    }
    out
}
