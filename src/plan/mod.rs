//! The plan: for every selected source table, the target table it lands in, how each column
//! converts, and the schema-level findings `check` reports.

pub mod migrations;
pub mod shared;
pub mod triggers;
pub mod views;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::config::Config;
use crate::error::Result;
use crate::expr;
use crate::model::Collation;
use crate::model::{Follow, PgType, ScanKey, SourceIndex, SourceTable, TableKind};
use crate::pg::catalog::TargetTable;
use crate::pg::convert::{self, ColumnConv};
use crate::pg::ddl::{self, CheckDef, ColumnDef, ForeignKeyDef, IndexDef};
use crate::sqlite::semantics::Declared;
use crate::typemap;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The move would lose or alter data, or fail: must be fixed (or excluded) first.
    Error,
    /// Moves, but something differs from SQLite in a way worth knowing.
    Warning,
    /// For the record.
    Info,
}

/// A schema-level finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// How serious.
    pub severity: Severity,
    /// The source table.
    pub table: String,
    /// The column, when it is about one.
    pub column: Option<String>,
    /// What is the matter.
    pub message: String,
    /// What to do.
    pub hint: String,
}

/// One column's mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPlan {
    /// Source column name.
    pub source: String,
    /// Its SQLite declared type.
    pub decl_type: String,
    /// Target column name.
    pub target: String,
    /// How values convert.
    pub conv: ColumnConv,
    /// A note for the report (identity, translated default, ...).
    pub note: Option<String>,
    /// Its declared collation (how SQLite compares its text).
    pub collation: Collation,
}

/// One table's mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct TablePlan {
    /// The source table.
    pub source: SourceTable,
    /// The target table name.
    pub target: String,
    /// Whether sqlite2pg creates the target table (and how), or takes the app's.
    pub mode: Target,
    /// Columns copied, in source order.
    pub columns: Vec<ColumnPlan>,
    /// Names of the scan-key columns (`rowid` when the table has none), for messages.
    pub key_names: Vec<String>,
    /// Column sets (indexes into `columns`) the target enforces as unique, primary key first.
    pub unique_keys: Vec<Vec<usize>>,
}

/// What the plan does with a target table.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// sqlite2pg creates it, as the spec says.
    Create(TableSpec),
    /// The app's migrations made it: sqlite2pg writes rows into it and changes nothing else.
    Existing,
}

/// A target table sqlite2pg creates.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// Its columns.
    pub column_defs: Vec<ColumnDef>,
    /// Primary key to add after the load (target names).
    pub primary_key: Vec<String>,
    /// Indexes to build after the load.
    pub indexes: Vec<IndexDef>,
    /// Foreign keys to add at cutover.
    pub foreign_keys: Vec<ForeignKeyDef>,
    /// CHECK constraints, translated or not.
    pub checks: Vec<CheckDef>,
}

impl TablePlan {
    /// The spec of a table sqlite2pg creates; `None` for one the app's migrations made.
    pub fn spec(&self) -> Option<&TableSpec> {
        match &self.mode {
            Target::Create(spec) => Some(spec),
            Target::Existing => None,
        }
    }

    /// Source column names, in copy order.
    pub fn source_columns(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.source.as_str()).collect()
    }

    /// Target column names, in copy order.
    pub fn target_columns(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.target.clone()).collect()
    }

    /// The copied columns as SQLite expressions name them (a view reading this table).
    pub fn expr_columns(&self) -> Vec<expr::Column> {
        expr_columns(&self.columns)
    }
}

/// A table that is not copied, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    /// The source table.
    pub table: String,
    /// Why.
    pub reason: String,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Tables to copy, parents before children.
    pub tables: Vec<TablePlan>,
    /// Tables left out.
    pub skipped: Vec<Skipped>,
    /// Schema-level findings.
    pub findings: Vec<Finding>,
    /// Target tables with no source table (e.g. `alembic_version`), left alone.
    pub target_only: Vec<String>,
    /// The shape of the source schema the plan was made from (`sqlite::schema::shape`).
    pub source_shape: Vec<(String, Vec<(String, String)>)>,
    /// The `--cast`s it was made with: given, or kept by the migration since its first `run`.
    pub casts: Vec<crate::config::Cast>,
    /// The frameworks whose migrations made the SQLite schema.
    pub frameworks: Vec<&'static crate::framework::Spec>,
    /// The tables naming the app's applied migrations that each database keeps for itself (the
    /// app's migrations made the Postgres one): never copied, in either direction.
    pub app_versions: Vec<AppVersions>,
}

/// A framework's table of applied migrations, kept apart on both sides.
#[derive(Debug, Clone, PartialEq)]
pub struct AppVersions {
    /// The framework.
    pub spec: &'static crate::framework::Spec,
    /// The SQLite table.
    pub source: String,
    /// The Postgres table.
    pub target: String,
}

impl Plan {
    /// A plan of one table alone (a check of that table's rows).
    pub fn single(table: TablePlan) -> Plan {
        Plan {
            tables: vec![table],
            skipped: Vec::new(),
            findings: Vec::new(),
            target_only: Vec::new(),
            source_shape: Vec::new(),
            casts: Vec::new(),
            frameworks: Vec::new(),
            app_versions: Vec::new(),
        }
    }

    /// The tables sqlite2pg creates, with their specs.
    pub fn created(&self) -> impl Iterator<Item = (&TablePlan, &TableSpec)> {
        self.tables.iter().filter_map(|t| t.spec().map(|s| (t, s)))
    }

    /// The Postgres names of the moved tables.
    pub fn targets(&self) -> Vec<String> {
        self.tables.iter().map(|t| t.target.clone()).collect()
    }

    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// One copy of each distinct plan among a fleet's tenants. Tenants made from one app share
/// its schema, so their plans are equal, and a plan is about 30 KB of a tenant's memory for
/// as long as it streams: at 1,000 tenants, a tenth of the daemon's peak.
#[derive(Debug, Default)]
pub struct SharedPlans {
    plans: std::sync::Mutex<Vec<std::sync::Weak<Plan>>>,
}

impl SharedPlans {
    /// `plan`, or an equal one a running tenant already holds. Compared whole, so a tenant
    /// whose schema, target or casts differ in anything keeps a plan of its own.
    pub fn share(&self, plan: Plan) -> std::sync::Arc<Plan> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        plans.retain(|p| p.strong_count() > 0);
        if let Some(same) = plans
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|p| **p == plan)
        {
            return same;
        }
        let plan = std::sync::Arc::new(plan);
        plans.push(std::sync::Arc::downgrade(&plan));
        plan
    }
}

/// Prefix of the scratch table Alembic's batch mode rebuilds a table through.
const ALEMBIC_SCRATCH: &str = "_alembic_tmp_";

fn find_ci<'a, T>(map: &'a BTreeMap<String, T>, name: &str) -> Option<(&'a String, &'a T)> {
    if let Some(kv) = map.get_key_value(name) {
        return Some(kv);
    }
    let mut found = map.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Reads both sides and plans: SQLite's schema and, with a target, Postgres' tables and what
/// sqlite2pg owns there (a state left by an older sqlite2pg is brought to this build's format
/// first, never taken for a fresh start). The client is handed back to go on with.
pub async fn load(cfg: &Config) -> Result<(Plan, Option<tokio_postgres::Client>)> {
    let tables = source_tables(cfg)?;
    let Some(url) = &cfg.target else {
        let mut plan = build(&tables, None, &[], cfg);
        plan.findings
            .extend(migrations::findings(None, &plan, cfg).await?);
        return Ok((plan, None));
    };
    let client = crate::pg::connect(url).await?;
    let plan = load_on(cfg, tables, &client).await?;
    Ok((plan, Some(client)))
}

/// The SQLite side of [`load`]: read first, so that a wrong `--source` is said before
/// Postgres is asked anything.
pub fn source_tables(cfg: &Config) -> Result<Vec<SourceTable>> {
    let busy = std::time::Duration::from_millis(cfg.busy_timeout_ms);
    let conn = crate::sqlite::open_read_only_now(&cfg.source, busy)?;
    crate::sqlite::read_now(&conn, busy, crate::sqlite::schema::read_tables)
}

/// The Postgres side of [`load`], on a connection the caller has (a fleet's tenant plans on
/// a pooled session). Takes the tables: the plan holds what it needs of them, and a fleet's
/// daemon that kept them beside it for as long as each tenant streams held 13 MB more at
/// 1,000 tenants.
pub async fn load_on(
    cfg: &Config,
    tables: Vec<SourceTable>,
    client: &tokio_postgres::Client,
) -> Result<Plan> {
    let mut recorded = None;
    // Read once: another process (a fleet's other tenant) may create the state meanwhile, in
    // steps; what this plan reads of it is read only once it is at this build's format.
    let started = crate::pg::state::format_version(client).await? > 0;
    if started {
        crate::pg::state::ensure(client).await?;
        recorded =
            crate::pg::state::setting(client, cfg.tenant_id(), crate::pg::state::CASTS).await?;
    }
    let cfg = &cfg.with_recorded_casts(recorded)?;
    let target = crate::pg::catalog::read_tables(client, &cfg.target_schema).await?;
    let owned = if started {
        crate::pg::state::owned_tables(
            client,
            cfg.tenant_id(),
            &crate::pg::Rows::of(cfg.tenant_column.as_deref(), cfg.tenant_id()),
            &cfg.target_schema,
        )
        .await?
    } else {
        Vec::new()
    };
    let mut plan = build(&tables, Some(&target), &owned, cfg);
    let (num, text) = crate::pg::server_version(client).await?;
    plan.findings.extend(version_finding(num, &text));
    plan.findings
        .extend(migrations::findings(Some(client), &plan, cfg).await?);
    Ok(plan)
}

/// A warning when the server is outside the majors the suite runs on: older ones may lack SQL
/// sqlite2pg sends, newer ones may have changed a catalog it reads.
fn version_finding(num: i32, text: &str) -> Option<Finding> {
    let major = num / 10000;
    let tested = crate::pg::TESTED_MAJORS;
    let (oldest, newest) = (tested[0], tested[tested.len() - 1]);
    let tested_list = tested.map(|m| m.to_string()).join(", ");
    let (message, hint) = if major < oldest {
        (
            format!(
                "the target runs PostgreSQL {text}, older than the oldest version sqlite2pg is tested on ({oldest}; tested: {tested_list})"
            ),
            format!(
                "upgrade the server to {oldest} or newer; otherwise rehearse the move into a scratch database on it (run, then verify) before the real one"
            ),
        )
    } else if major > newest {
        (
            format!(
                "the target runs PostgreSQL {text}, newer than the newest version sqlite2pg is tested on ({newest}; tested: {tested_list})"
            ),
            "rehearse the move into a scratch database on it (run, then verify) before the real one".into(),
        )
    } else {
        return None;
    };
    Some(Finding {
        severity: Severity::Warning,
        table: String::new(),
        column: None,
        message,
        hint,
    })
}

/// Builds the plan from the source schema and, when there is one, the existing target schema.
///
/// `owned` lists target tables an earlier, possibly killed, run created: they are planned as
/// created tables again (keys, indexes and foreign keys may still be missing), not as the app's.
pub fn build(
    source: &[SourceTable],
    target: Option<&BTreeMap<String, TargetTable>>,
    owned: &[String],
    cfg: &Config,
) -> Plan {
    let mut findings = Vec::new();
    let mut skipped = Vec::new();
    let mut tables = Vec::new();
    let selected: Vec<&SourceTable> = source.iter().filter(|t| cfg.selects(&t.name)).collect();
    for name in cfg.include.iter() {
        if !source.iter().any(|t| &t.name == name) {
            findings.push(Finding {
                severity: Severity::Error,
                table: name.clone(),
                column: None,
                message: format!("--include names table {name}, which the SQLite file does not have"),
                hint: "check the spelling (table names are case-sensitive here) or drop it from --include".into(),
            });
        }
    }
    let empty = BTreeMap::new();
    let target_tables = target.unwrap_or(&empty);
    let mut used_targets: HashMap<String, String> = HashMap::new();
    let mut narrow = Vec::new();
    let frameworks = crate::framework::recognise(source);
    // What the framework's mapping takes for granted: (assumption, table.column).
    let mut assumed = Vec::new();
    let mut app_versions = Vec::new();
    for t in &selected {
        if t.name.starts_with(ALEMBIC_SCRATCH) {
            // Lives only inside a batch migration's transaction (create, copy, drop, rename);
            // the table it becomes is followed under its real name.
            skipped.push(Skipped {
                table: t.name.clone(),
                reason: "Alembic batch-migration scratch table".into(),
            });
            continue;
        }
        match t.kind {
            TableKind::Virtual => {
                let module = t
                    .sql
                    .split_whitespace()
                    .skip_while(|w| !w.eq_ignore_ascii_case("USING"))
                    .nth(1)
                    .unwrap_or("?");
                skipped.push(Skipped {
                    table: t.name.clone(),
                    reason: format!("virtual table ({module})"),
                });
                findings.push(Finding {
                    severity: Severity::Warning,
                    table: t.name.clone(),
                    column: None,
                    message: format!("virtual table using {module} is not copied (its shadow tables are skipped too)"),
                    hint: "recreate it in Postgres (full-text search: a tsvector column with a GIN index) or --exclude it".into(),
                });
                continue;
            }
            TableKind::Shadow => {
                skipped.push(Skipped {
                    table: t.name.clone(),
                    reason: "shadow table of a virtual table".into(),
                });
                continue;
            }
            TableKind::Plain => {}
        }
        let target_name = ddl::truncate_ident(&t.name);
        if target_name != t.name {
            findings.push(Finding {
                severity: Severity::Warning,
                table: t.name.clone(),
                column: None,
                message: format!("table name is {} bytes; Postgres keeps the first 63: {target_name}", t.name.len()),
                hint: "nothing to do unless another name shares those 63 bytes; the app's queries are cut the same way".into(),
            });
        }
        if let Some(other) = used_targets.insert(target_name.to_lowercase(), t.name.clone()) {
            findings.push(Finding {
                severity: Severity::Error,
                table: t.name.clone(),
                column: None,
                message: format!("lands on the same Postgres table name as table {other}"),
                hint: "rename one of the tables in SQLite, or --exclude one".into(),
            });
            continue;
        }
        if t.follow() == Follow::ByImage {
            let why = if t.primary_key.is_empty() {
                "has no PRIMARY KEY".to_string()
            } else {
                "has NULLs in its PRIMARY KEY (SQLite allows them for a non-INTEGER key), so the key identifies no row".to_string()
            };
            findings.push(Finding {
                severity: Severity::Info,
                table: t.name.clone(),
                column: None,
                message: format!(
                    "{why}: it is followed by whole-row images (like Postgres' REPLICA IDENTITY FULL). Identical rows stay as many as SQLite holds, and a VACUUM changes nothing; an UPDATE or DELETE on it scans its Postgres table unless an index covers the columns"
                ),
                hint: "nothing to do; a primary key makes its capture lighter".into(),
            });
        }
        let existing = if owned.contains(&target_name) {
            None
        } else {
            find_ci(target_tables, &target_name)
        };
        if cfg.tenant_column.is_some()
            && let Some((name, _)) = existing
        {
            findings.push(shared::not_ours(&t.name, &cfg.target_schema, name));
            continue;
        }
        let versions_of = frameworks
            .iter()
            .find(|s| s.versions.eq_ignore_ascii_case(&t.name));
        if let (Some((target, _)), Some(spec)) = (existing, versions_of) {
            // Each side's rows name its own migrations (an app may keep one tree per
            // database): SQLite's copied over would name revisions the Postgres app lacks.
            skipped.push(Skipped {
                table: t.name.clone(),
                reason: format!(
                    "{}'s applied migrations: each database keeps its own (the app's migrations made the Postgres table)",
                    spec.name
                ),
            });
            app_versions.push(AppVersions {
                spec,
                source: t.name.clone(),
                target: target.clone(),
            });
            continue;
        }
        let mut plan = match existing {
            Some((_, tt)) => plan_existing(t, tt, cfg, &mut findings, &mut narrow, &mut assumed),
            None => plan_create(
                t,
                &target_name,
                &selected,
                &frameworks,
                cfg,
                &mut findings,
                &mut assumed,
            ),
        };
        if let Some(column) = cfg.tenant_column.as_deref() {
            findings.extend(shared::clash(&plan, column));
            if let Target::Create(spec) = &mut plan.mode {
                shared::lead_with(spec, column);
                // Made by another tenant (or an earlier run of this one): taken as it is.
                if let Some(tt) = target_tables.get(&target_name) {
                    findings.extend(shared::differences(&t.name, spec, tt, &cfg.target_schema));
                }
            }
        }
        tables.push(plan);
    }
    findings.extend(narrow_finding(&narrow, &cfg.target_schema));
    findings.extend(assumption_findings(&assumed));
    let target_only = target_tables
        .keys()
        .filter(|k| {
            !tables.iter().any(|p| &p.target == *k)
                && !owned.contains(k)
                && !app_versions.iter().any(|v: &AppVersions| &v.target == *k)
        })
        .cloned()
        .collect();
    order_parents_first(&mut tables);
    Plan {
        tables,
        skipped,
        findings,
        target_only,
        source_shape: crate::sqlite::schema::shape(source),
        casts: cfg.casts.clone(),
        frameworks,
        app_versions,
    }
}

/// SQLite's collation names as Postgres folds them (one it does not know compares as BINARY;
/// `check` names it).
/// Whether the value SQLite stores for a default converts to the target column, as every
/// copied value must: `DEFAULT '"0"'` on an INTEGER column stores the text `"0"`, which no
/// bigint holds (Postgres would refuse the CREATE TABLE, and a row the app inserts after the
/// cutover would get another value than on SQLite).
fn default_holds(decl_type: &str, raw: &str, conv: &ColumnConv) -> std::result::Result<(), String> {
    let Some(value) = crate::sqlite::semantics::default_value(decl_type, raw) else {
        return Ok(());
    };
    // SQLAlchemy's `Interval(server_default="0")`: a zero length on Postgres, as the app's own
    // Postgres migration makes it (SQLite stores the integer 0, which SQLAlchemy cannot read
    // back there, so no row the app reads holds it).
    if conv.ty == PgType::Interval && value.as_ref() == crate::model::SqlValue::Integer(0) {
        return Ok(());
    }
    let mut scratch = bytes::BytesMut::new();
    convert::encode(value.as_ref(), conv, &mut scratch).map_err(|e| {
        format!(
            "SQLite stores it as the {} {}, which a {} column cannot hold ({})",
            value.as_ref().storage_class(),
            value.as_ref().display(),
            conv.ty.sql(),
            e.detail
        )
    })
}

fn collations(names: &[String]) -> Vec<Collation> {
    names
        .iter()
        .map(|n| Collation::named(n).unwrap_or(Collation::Binary))
        .collect()
}

fn key_names(t: &SourceTable) -> Vec<String> {
    match t.scan_key() {
        ScanKey::Rowid => vec!["rowid".into()],
        ScanKey::Columns(idx) => idx.iter().map(|i| t.columns[*i].name.clone()).collect(),
    }
}

fn plan_create(
    t: &SourceTable,
    target: &str,
    selected: &[&SourceTable],
    frameworks: &[&crate::framework::Spec],
    cfg: &Config,
    findings: &mut Vec<Finding>,
    assumed: &mut Vec<(crate::framework::Assumption, String)>,
) -> TablePlan {
    let declared = crate::sqlite::semantics::declared(&t.sql).unwrap_or_default();
    let (mut columns, mut column_defs) =
        plan_columns(t, &declared, frameworks, cfg, findings, assumed);
    let computed = plan_generated(t, &declared, &columns, &mut column_defs, findings);
    columns.retain(|c| !computed.contains(&c.source));
    // A key holding NULLs cannot be a Postgres primary key; the table is followed by row images.
    let pk_columns: Vec<usize> = if t.null_in_primary_key {
        Vec::new()
    } else {
        t.primary_key
            .iter()
            .filter_map(|i| column_index(&columns, &t.columns[*i].name))
            .collect()
    };
    let primary_key: Vec<String> = pk_columns
        .iter()
        .map(|i| columns[*i].target.clone())
        .collect();
    let mut unique_keys = Vec::new();
    if !pk_columns.is_empty() {
        unique_keys.push(pk_columns);
    }
    let scope = scope_of(t, &columns);
    let indexes = plan_indexes(
        t,
        &scope,
        &columns,
        &primary_key,
        &mut unique_keys,
        findings,
    );
    let checks = plan_checks(t, &scope, &declared);
    let foreign_keys = plan_foreign_keys(t, selected, &columns, findings);
    TablePlan {
        source: t.clone(),
        target: target.to_string(),
        mode: Target::Create(TableSpec {
            column_defs,
            primary_key,
            indexes,
            foreign_keys,
            checks,
        }),
        columns,
        key_names: key_names(t),
        unique_keys,
    }
}

impl Finding {
    /// A finding about one column of `t`.
    fn on_column(
        severity: Severity,
        t: &SourceTable,
        column: &str,
        message: String,
        hint: &str,
    ) -> Finding {
        Finding {
            severity,
            table: t.name.clone(),
            column: Some(column.to_string()),
            message,
            hint: hint.to_string(),
        }
    }
}

/// The position of a copied column, by its source name as SQLite matches names.
fn column_index(columns: &[ColumnPlan], name: &str) -> Option<usize> {
    columns
        .iter()
        .position(|c| c.source.eq_ignore_ascii_case(name))
}

/// Each column of a created table: its type (the framework's, a `--cast`'s or the declared
/// type's), name, identity, default and collation.
fn plan_columns(
    t: &SourceTable,
    declared: &crate::sqlite::semantics::Declared,
    frameworks: &[&crate::framework::Spec],
    cfg: &Config,
    findings: &mut Vec<Finding>,
    assumed: &mut Vec<(crate::framework::Assumption, String)>,
) -> (Vec<ColumnPlan>, Vec<ColumnDef>) {
    let json_checked = |column: &str| {
        declared.checks.iter().any(|c| {
            crate::framework::json_valid_column(&c.expr.to_string())
                .is_some_and(|col| col.eq_ignore_ascii_case(column))
        })
    };
    // Sized once: a fleet daemon keeps every tenant's plan for as long as it streams.
    let mut columns = Vec::with_capacity(t.columns.len());
    let mut column_defs = Vec::with_capacity(t.columns.len());
    let mut finding = |sev, col: &str, message: String, hint: &str| {
        findings.push(Finding::on_column(sev, t, col, message, hint))
    };
    let mut seen_cols: HashMap<String, String> = HashMap::new();
    for (i, c) in t.columns.iter().enumerate() {
        let cast = cfg.cast_for(&t.name, &c.name);
        // A --cast overrides the framework's mapping, as it overrides the plain one.
        let mapped = crate::framework::map_column(frameworks, &c.decl_type, json_checked(&c.name))
            .filter(|_| cast.and_then(|c| c.target_type.as_ref()).is_none());
        let mut ty = match &mapped {
            Some(m) => m.ty.clone(),
            None => typemap::map_decltype(&c.decl_type),
        };
        if let Some(a) = mapped.as_ref().and_then(|m| m.assumes) {
            assumed.push((a, format!("{}.{}", t.name, c.name)));
        }
        let cast_type = cast.and_then(|c| c.target_type.as_deref());
        // json has no btree operator class: an index on it could not be built (unless a cast
        // says otherwise, jsonb it is).
        let json_indexed = ty == PgType::Json
            && cast_type.is_none()
            && t.indexes.iter().any(|ix| {
                ix.columns
                    .iter()
                    .flatten()
                    .any(|col| col.eq_ignore_ascii_case(&c.name))
            });
        if json_indexed {
            ty = PgType::Jsonb;
        }
        if let Some(name) = cast_type {
            match typemap::parse_pg_type_name(name) {
                Some(cast_ty) => ty = cast_ty,
                None => finding(
                    Severity::Error,
                    &c.name,
                    format!("--cast names type '{name}', which sqlite2pg cannot write"),
                    &format!("use one of: {}", typemap::CAST_TYPES.join(", ")),
                ),
            }
        }
        let target_col = ddl::truncate_ident(&c.name);
        if target_col != c.name {
            finding(
                Severity::Warning,
                &c.name,
                format!(
                    "column name is {} bytes; Postgres keeps the first 63",
                    c.name.len()
                ),
                "nothing to do unless another column shares those 63 bytes",
            );
        }
        if let Some(other) = seen_cols.insert(target_col.clone(), c.name.clone()) {
            finding(
                Severity::Error,
                &c.name,
                format!("lands on the same Postgres column name as column {other}"),
                "rename one of the columns in SQLite",
            );
        }
        let identity = t.rowid_alias == Some(i) && ty.is_integer();
        let mut note = None;
        if identity {
            note = Some(
                if t.autoincrement {
                    "AUTOINCREMENT -> identity"
                } else {
                    "INTEGER PRIMARY KEY -> identity"
                }
                .to_string(),
            );
        }
        if matches!(c.decl_type.trim(), "") {
            note = Some("no declared type: values of any class become text".into());
        }
        if let Some(m) = &mapped {
            note = Some(m.why.clone());
        }
        if json_indexed {
            note = Some("JSON under an index: jsonb (json has no btree operator class; SQLAlchemy apps declare JSONB for it on Postgres). A unique index then compares values, not text: `check` names rows equal as JSON".into());
        }
        let conv = ColumnConv {
            ty: ty.clone(),
            encoding: cast
                .and_then(|c| c.encoding)
                .or(mapped.as_ref().and_then(|m| m.encoding)),
        };
        let default = match (&c.default, identity) {
            (Some(raw), false) => match default_holds(&c.decl_type, raw, &conv).and_then(|()| {
                ddl::translate_default(raw, &ty).or_else(|_| {
                    expr::parse(raw)
                        .and_then(|e| expr::value_for(&e, &expr::Scope::default(), &ty))
                        .map(Some)
                })
            }) {
                Ok(d) => d,
                Err(why) => {
                    let interval = conv.encoding.is_none()
                        && matches!(ty, PgType::Timestamp { .. } | PgType::Timestamptz { .. })
                        && raw.trim().trim_matches('\'') == "0";
                    let hint = if interval {
                        format!(
                            "SQLAlchemy declares its Interval as DATETIME with server_default '0' on SQLite: if this is one, --cast {}.{}=interval (then the default is a zero length, as on the app's Postgres); otherwise add the default in Postgres by hand if the app relies on it",
                            t.name, c.name
                        )
                    } else {
                        "add the default in Postgres by hand if the app relies on it".into()
                    };
                    finding(
                        Severity::Warning,
                        &c.name,
                        format!("default {raw} is not created: {why}"),
                        &hint,
                    );
                    None
                }
            },
            _ => None,
        };
        column_defs.push(ColumnDef {
            name: target_col.clone(),
            ty: ty.clone(),
            not_null: c.not_null,
            default,
            identity,
            generated: None,
        });
        columns.push(ColumnPlan {
            source: c.name.clone(),
            decl_type: c.decl_type.clone(),
            target: target_col,
            conv,
            note,
            collation: declared.collation_of(&c.name),
        });
    }
    (columns, column_defs)
}

/// Generated columns whose expression translates are computed by Postgres, over the plain
/// columns (Postgres' generated columns cannot name one another), and never written: their
/// names are returned, to leave the copied columns. The others stay plain columns holding
/// SQLite's values.
fn plan_generated(
    t: &SourceTable,
    declared: &crate::sqlite::semantics::Declared,
    columns: &[ColumnPlan],
    column_defs: &mut [ColumnDef],
    findings: &mut Vec<Finding>,
) -> Vec<String> {
    let mut finding = |sev, col: &str, message: String, hint: &str| {
        findings.push(Finding::on_column(sev, t, col, message, hint))
    };
    // Generated columns whose expression translates are computed by Postgres, over the plain
    // columns (Postgres' generated columns cannot name one another), and never written: they
    // leave the copied columns. The others stay plain columns holding SQLite's values.
    let is_generated = |name: &str| t.columns.iter().any(|c| c.generated && c.name == name);
    let plain: Vec<ColumnPlan> = columns
        .iter()
        .filter(|c| !is_generated(&c.source))
        .cloned()
        .collect();
    let plain_scope = scope_of(t, &plain);
    let mut computed = Vec::new();
    for (i, c) in t.columns.iter().enumerate().filter(|(_, c)| c.generated) {
        let translated = declared
            .generated
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&c.name))
            .ok_or_else(|| "its expression could not be read".to_string())
            .and_then(|(_, e)| expr::value_for(e, &plain_scope, &column_defs[i].ty));
        match translated {
            Ok(pg) => {
                finding(
                    Severity::Info,
                    &c.name,
                    format!(
                        "generated column becomes GENERATED ALWAYS AS ({pg}) STORED: Postgres computes it, and its values are not copied"
                    ),
                    "",
                );
                column_defs[i].generated = Some(pg);
                column_defs[i].default = None;
                computed.push(c.name.clone());
            }
            Err(why) => finding(
                Severity::Warning,
                &c.name,
                format!(
                    "generated column becomes a plain column holding the computed values: {why}"
                ),
                "add the generation expression in Postgres by hand if the app relies on it",
            ),
        }
    }
    computed
}

/// The indexes of a created table that translate (the others are findings), and the
/// index that makes a NOCASE or RTRIM primary key unique by its folded value. Full unique
/// indexes on plain columns join `unique_keys`.
fn plan_indexes(
    t: &SourceTable,
    scope: &expr::Scope,
    columns: &[ColumnPlan],
    primary_key: &[String],
    unique_keys: &mut Vec<Vec<usize>>,
    findings: &mut Vec<Finding>,
) -> Vec<IndexDef> {
    let col_index = |name: &str| column_index(columns, name);
    let mut indexes = Vec::new();
    for ix in &t.indexes {
        let (cols, expressions) = match index_terms(ix, scope, columns, &col_index) {
            Ok(terms) => terms,
            Err(why) => {
                findings.push(Finding {
                    severity: Severity::Warning,
                    table: t.name.clone(),
                    column: None,
                    message: format!(
                        "{}index {}{} is not created: {why}",
                        if ix.unique { "unique " } else { "" },
                        ix.name,
                        if ix.columns.iter().any(Option::is_none) {
                            " is on an expression and"
                        } else {
                            ""
                        }
                    ),
                    hint: if ix.unique {
                        "create it in Postgres by hand, or Postgres accepts the duplicates SQLite refuses (and the reverse stream stops on them after a cutover)".into()
                    } else {
                        "create it in Postgres by hand if queries need it".into()
                    },
                });
                continue;
            }
        };
        if ix.unique && ix.where_clause.is_none() && expressions.iter().all(Option::is_none) {
            unique_keys.push(
                ix.columns
                    .iter()
                    .filter_map(|c| c.as_deref().and_then(col_index))
                    .collect(),
            );
        }
        let name = if ix.origin == "u" || ix.name.starts_with("sqlite_autoindex") {
            ddl::object_name(&t.name, &cols, "key")
        } else {
            ddl::truncate_ident(&ix.name)
        };
        // A partial index's predicate is an expression like any other: translated exactly, or
        // the index is left out (a lookalike predicate would index other rows).
        let where_clause = match ix
            .where_clause
            .as_deref()
            .map(|w| expr::parse(w).and_then(|e| expr::condition(&e, scope)))
        {
            None => None,
            Some(Ok(pg)) => Some(pg),
            Some(Err(why)) => {
                findings.push(Finding {
                    severity: Severity::Warning,
                    table: t.name.clone(),
                    column: None,
                    message: format!(
                        "partial {}index {} is not created: its WHERE clause does not translate: {why}",
                        if ix.unique { "unique " } else { "" },
                        ix.name
                    ),
                    hint: if ix.unique {
                        "create it in Postgres by hand, or Postgres accepts the duplicates SQLite refuses".into()
                    } else {
                        "create it in Postgres by hand if queries need it".into()
                    },
                });
                continue;
            }
        };
        indexes.push(IndexDef {
            name,
            unique: ix.unique,
            columns: cols
                .into_iter()
                .zip(ix.descending.iter().copied())
                .collect(),
            collations: if ix.unique {
                collations(&ix.collations)
            } else {
                Vec::new()
            },
            where_clause,
            expressions,
        });
    }
    // A NOCASE or RTRIM primary key is unique by the folded value too: a second index says so.
    let key_collations = collations(&t.key_collations);
    if !primary_key.is_empty() && key_collations.iter().any(|c| *c != Collation::Binary) {
        indexes.push(IndexDef {
            name: ddl::object_name(&t.name, primary_key, "fold_key"),
            unique: true,
            columns: primary_key.iter().map(|c| (c.clone(), false)).collect(),
            collations: key_collations,
            where_clause: None,
            expressions: Vec::new(),
        });
    }
    indexes
}

/// The foreign keys of a created table whose parent is copied too (the others are findings).
fn plan_foreign_keys(
    t: &SourceTable,
    selected: &[&SourceTable],
    columns: &[ColumnPlan],
    findings: &mut Vec<Finding>,
) -> Vec<ForeignKeyDef> {
    let col_index = |name: &str| column_index(columns, name);
    let mut foreign_keys = Vec::new();
    for fk in &t.foreign_keys {
        let Some(parent) = selected
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(&fk.parent) && p.kind == TableKind::Plain)
        else {
            findings.push(Finding {
                severity: Severity::Warning,
                table: t.name.clone(),
                column: Some(fk.columns.join(", ")),
                message: format!(
                    "foreign key to {} is not created: that table is not copied",
                    fk.parent
                ),
                hint: "include the parent table, or add the constraint by hand".into(),
            });
            continue;
        };
        let parent_cols: Vec<String> = if fk.parent_columns.is_empty() {
            parent
                .primary_key
                .iter()
                .map(|i| ddl::truncate_ident(&parent.columns[*i].name))
                .collect()
        } else {
            fk.parent_columns
                .iter()
                .map(|c| {
                    let real = parent
                        .columns
                        .iter()
                        .find(|pc| pc.name.eq_ignore_ascii_case(c))
                        .map(|pc| pc.name.clone())
                        .unwrap_or_else(|| c.clone());
                    ddl::truncate_ident(&real)
                })
                .collect()
        };
        let child_cols: Vec<String> = fk
            .columns
            .iter()
            .map(|c| {
                col_index(c)
                    .map(|i| columns[i].target.clone())
                    .unwrap_or_else(|| c.clone())
            })
            .collect();
        foreign_keys.push(ForeignKeyDef {
            name: ddl::object_name(&t.name, &child_cols, "fkey"),
            columns: child_cols,
            parent: ddl::truncate_ident(&parent.name),
            parent_columns: parent_cols,
            on_delete: fk.on_delete.clone(),
            on_update: fk.on_update.clone(),
        });
    }
    foreign_keys
}

/// Target names (or, for a term on an expression, SQLite's text of it) and the Postgres SQL of
/// each term on an expression; why the index cannot be made on Postgres otherwise.
type IndexTerms = (Vec<String>, Vec<Option<String>>);

fn index_terms(
    ix: &SourceIndex,
    scope: &expr::Scope,
    columns: &[ColumnPlan],
    col_index: &dyn Fn(&str) -> Option<usize>,
) -> Result<IndexTerms, String> {
    let texts = if ix.columns.iter().any(Option::is_none) {
        let texts = ix
            .sql
            .as_deref()
            .and_then(crate::sqlite::schema::index_terms)
            .filter(|t| t.len() == ix.columns.len())
            .ok_or("its CREATE INDEX could not be read")?;
        Some(texts)
    } else {
        None
    };
    let mut names = Vec::new();
    let mut expressions = Vec::new();
    for (i, c) in ix.columns.iter().enumerate() {
        match (c, &texts) {
            (Some(name), _) => {
                let at =
                    col_index(name).ok_or_else(|| format!("its column {name} is not copied"))?;
                names.push(columns[at].target.clone());
                expressions.push(None);
            }
            (None, Some(texts)) => {
                names.push(texts[i].clone());
                expressions.push(Some(expr::index_term(&texts[i], scope)?));
            }
            (None, None) => return Err("its CREATE INDEX could not be read".into()),
        }
    }
    Ok((names, expressions))
}

/// The columns a CHECK of table `t` may name, as Postgres has them.
fn scope_of(t: &SourceTable, columns: &[ColumnPlan]) -> expr::Scope {
    expr::Scope::table(&t.name, expr_columns(columns))
}

/// Copied columns as SQLite expressions see them: name, type and declared collation.
fn expr_columns(columns: &[ColumnPlan]) -> Vec<expr::Column> {
    columns
        .iter()
        .map(|c| expr::Column {
            name: c.source.clone(),
            target: c.target.clone(),
            ty: c.conv.ty.clone(),
            decl_type: c.decl_type.clone(),
            collation: c.collation,
        })
        .collect()
}

/// The table's CHECK constraints, each named as Postgres would name it unless SQLite's
/// declaration gave it a name.
fn plan_checks(t: &SourceTable, scope: &expr::Scope, declared: &Declared) -> Vec<CheckDef> {
    let mut out: Vec<CheckDef> = Vec::new();
    for c in &declared.checks {
        let base = match (&c.name, &c.column) {
            (Some(n), _) => ddl::truncate_ident(n),
            (None, Some(col)) => ddl::object_name(&t.name, std::slice::from_ref(col), "check"),
            (None, None) => ddl::object_name(&t.name, &[], "check"),
        };
        let mut name = base.clone();
        let mut n = 0;
        while out.iter().any(|o| o.name == name) {
            n += 1;
            name = ddl::truncate_ident(&format!("{base}{n}"));
        }
        out.push(CheckDef {
            name,
            source: c.expr.to_string(),
            pg: expr::condition(&c.expr, scope),
        });
    }
    out
}

/// One finding per assumption of a framework's mapping, naming every column it concerns.
fn assumption_findings(assumed: &[(crate::framework::Assumption, String)]) -> Vec<Finding> {
    use crate::framework::Assumption;
    [
        Assumption::UtcDatetimes,
        Assumption::NaiveIsUtc,
        Assumption::DecimalScale,
    ]
        .into_iter()
        .filter_map(|a| {
            let columns: Vec<&str> = assumed
                .iter()
                .filter(|(x, _)| *x == a)
                .map(|(_, c)| c.as_str())
                .collect();
            if columns.is_empty() {
                return None;
            }
            let list = columns.join(", ");
            let casts = |ty: &str| {
                columns
                    .iter()
                    .map(|c| format!("--cast {c}={ty}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            Some(match a {
                Assumption::UtcDatetimes => Finding {
                    severity: Severity::Info,
                    table: String::new(),
                    column: None,
                    message: format!(
                        "Django's datetimes are read as UTC into timestamptz, as Django stores aware datetimes (USE_TZ=True, its default) and its Postgres backend types them: {list}"
                    ),
                    hint: format!(
                        "if the app runs with USE_TZ=False, keep them naive: {}",
                        casts("timestamp")
                    ),
                },
                Assumption::NaiveIsUtc => Finding {
                    severity: Severity::Info,
                    table: String::new(),
                    column: None,
                    message: format!(
                        "date-times without a UTC offset in SQLite are read as UTC into the app's timestamptz columns, as SQLAlchemy's DateTime(timezone=True) and Django (USE_TZ=True) store them: {list}"
                    ),
                    hint: "if the app wrote local times without an offset there, each would move by the zone's offset: rewrite them in SQLite as UTC (or with their offset, `2024-05-01 10:00:00+02:00`) before the move".into(),
                },
                Assumption::DecimalScale => Finding {
                    severity: Severity::Warning,
                    table: String::new(),
                    column: None,
                    message: format!(
                        "Django declares `decimal` in SQLite without the field's max_digits and decimal_places, so sqlite2pg makes numeric without a scale and Django's ORM on Postgres reads 524723.8 where SQLite gave it 524723.80: {list}"
                    ),
                    hint: format!(
                        "let Django's migrations make the Postgres schema (numeric(p,s) as the model says), or give each its precision: {}",
                        casts("numeric(P,S)")
                    ),
                },
            })
        })
        .collect()
}

/// A column of the app's Postgres schema narrower than the 64-bit integers SQLite holds in it.
struct Narrow {
    table: String,
    column: String,
    ty: PgType,
}

/// One finding for every narrow column: a framework's schema has one per 32-bit id (Django's
/// AutoField: 21 in its own apps alone), and the advice is the same for all.
fn narrow_finding(narrow: &[Narrow], schema: &str) -> Option<Finding> {
    let first = narrow.first()?;
    let alters: Vec<String> = narrow
        .iter()
        .map(|n| {
            format!(
                "ALTER TABLE {} ALTER COLUMN {} TYPE bigint;",
                crate::pg::qualified(schema, &n.table),
                crate::pg::quote_ident(&n.column)
            )
        })
        .collect();
    let listed: Vec<String> = narrow
        .iter()
        .map(|n| format!("{}.{} ({})", n.table, n.column, n.ty.sql()))
        .collect();
    Some(Finding {
        severity: Severity::Warning,
        table: if narrow.len() == 1 {
            first.table.clone()
        } else {
            String::new()
        },
        column: (narrow.len() == 1).then(|| first.column.clone()),
        message: format!(
            "{} target column(s) are narrower than the 64-bit integers SQLite holds in them: the first value the app writes past 2147483647 (32767 for smallint) stops the stream: {}",
            narrow.len(),
            listed.join(", ")
        ),
        hint: format!(
            "widen them in a migration ({}), unless the app guarantees smaller values",
            alters.join(" ")
        ),
    })
}

fn plan_existing(
    t: &SourceTable,
    tt: &TargetTable,
    cfg: &Config,
    findings: &mut Vec<Finding>,
    narrow: &mut Vec<Narrow>,
    assumed: &mut Vec<(crate::framework::Assumption, String)>,
) -> TablePlan {
    let declared = crate::sqlite::semantics::declared(&t.sql).unwrap_or_default();
    let mut columns = Vec::with_capacity(t.columns.len());
    let mut used = vec![false; tt.columns.len()];
    for c in &t.columns {
        let found = tt
            .columns
            .iter()
            .position(|tc| tc.name == c.name)
            .or_else(|| {
                let mut it = tt
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|(_, tc)| tc.name.eq_ignore_ascii_case(&c.name));
                let first = it.next()?;
                it.next().is_none().then_some(first.0)
            });
        let Some(pos) = found else {
            findings.push(Finding {
                severity: Severity::Error,
                table: t.name.clone(),
                column: Some(c.name.clone()),
                message: format!(
                    "the target table {} has no column {}; its values would be lost",
                    tt.name, c.name
                ),
                hint: "add the column to the target (a migration), or drop it from SQLite".into(),
            });
            continue;
        };
        used[pos] = true;
        let tc = &tt.columns[pos];
        if tc.generated {
            findings.push(Finding {
                severity: Severity::Info,
                table: t.name.clone(),
                column: Some(c.name.clone()),
                message: "the target column is generated; Postgres computes it, SQLite's values are not copied".into(),
                hint: String::new(),
            });
            continue;
        }
        if let PgType::Unsupported { name } = &tc.ty {
            findings.push(Finding {
                severity: Severity::Error,
                table: t.name.clone(),
                column: Some(c.name.clone()),
                message: format!("target column type {name} is not one sqlite2pg can write"),
                hint: "change the target column to a supported type (text, numeric, timestamp, jsonb, ...)".into(),
            });
        }
        if matches!(tc.ty, PgType::Int2 | PgType::Int4)
            && typemap::map_decltype(&c.decl_type) == PgType::Int8
        {
            narrow.push(Narrow {
                table: tt.name.clone(),
                column: tc.name.clone(),
                ty: tc.ty.clone(),
            });
        }
        let cast = cfg.cast_for(&t.name, &c.name);
        if cast.and_then(|c| c.target_type.as_ref()).is_some() {
            findings.push(Finding {
                severity: Severity::Warning,
                table: t.name.clone(),
                column: Some(c.name.clone()),
                message:
                    "--cast names a type, but the target table exists: its own column type is used"
                        .into(),
                hint:
                    "keep only the encoding part of the cast (epoch_s, epoch_ms, epoch_us, julian)"
                        .into(),
            });
        }
        let encoding = cast.and_then(|c| c.encoding);
        if matches!(tc.ty, PgType::Timestamptz { .. }) && encoding.is_none() {
            assumed.push((
                crate::framework::Assumption::NaiveIsUtc,
                format!("{}.{}", t.name, c.name),
            ));
        }
        columns.push(ColumnPlan {
            source: c.name.clone(),
            decl_type: c.decl_type.clone(),
            target: tc.name.clone(),
            conv: ColumnConv {
                ty: tc.ty.clone(),
                encoding,
            },
            note: (tc.name != c.name).then(|| format!("matched to {} ignoring case", tc.name)),
            collation: declared.collation_of(&c.name),
        });
    }
    for (tc, used) in tt.columns.iter().zip(used) {
        if !used && tc.not_null && !tc.has_default && !tc.generated {
            findings.push(Finding {
                severity: Severity::Error,
                table: t.name.clone(),
                column: Some(tc.name.clone()),
                message: format!(
                    "target column {}.{} is NOT NULL without a default and has no source column",
                    tt.name, tc.name
                ),
                hint: "give it a default in the target, or make it nullable".into(),
            });
        }
    }
    let unique_keys = tt
        .unique_keys
        .iter()
        .filter_map(|names| {
            names
                .iter()
                .map(|n| columns.iter().position(|c: &ColumnPlan| &c.target == n))
                .collect::<Option<Vec<_>>>()
        })
        .collect();
    TablePlan {
        source: t.clone(),
        target: tt.name.clone(),
        mode: Target::Existing,
        columns,
        key_names: key_names(t),
        unique_keys,
    }
}

/// Sorts tables so that parents come before children (cycles keep their name order).
fn order_parents_first(tables: &mut Vec<TablePlan>) {
    let mut ordered: Vec<TablePlan> = Vec::with_capacity(tables.len());
    let mut rest: Vec<TablePlan> = std::mem::take(tables);
    while !rest.is_empty() {
        let ready = rest.iter().position(|t| {
            t.source.foreign_keys.iter().all(|fk| {
                fk.parent.eq_ignore_ascii_case(&t.source.name)
                    || !rest
                        .iter()
                        .any(|o| o.source.name.eq_ignore_ascii_case(&fk.parent))
            })
        });
        ordered.push(rest.remove(ready.unwrap_or(0)));
    }
    *tables = ordered;
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn servers_outside_the_tested_majors_get_a_warning() {
        let warned = |num, text| version_finding(num, text).map(|f| f.message);
        assert!(
            warned(140010, "14.10").is_some_and(|m| m.contains("older") && m.contains("14.10"))
        );
        assert!(warned(130000, "13.0").is_some());
        assert_eq!(warned(150018, "15.18"), None);
        assert_eq!(warned(160002, "16.2"), None);
        assert_eq!(warned(170005, "17.5"), None);
        assert_eq!(warned(180006, "18.6"), None);
        assert!(warned(190000, "19devel").is_some_and(|m| m.contains("newer")));
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;

    fn plan_of(ddl: &str) -> Plan {
        let conn = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        conn.execute_batch(ddl).expect("schema");
        let tables = crate::sqlite::schema::read_tables(&conn).expect("read tables");
        let flags = crate::config::Flags {
            source: Some("app.db".into()),
            ..Default::default()
        };
        let cfg = Config::merge(flags, crate::config::FileConfig::default()).expect("config");
        build(&tables, None, &[], &cfg)
    }

    const CRM: &str = "CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        CREATE TABLE leads (id INTEGER PRIMARY KEY, client_id INTEGER REFERENCES clients (id),
                            created_at DATETIME);";

    #[test]
    fn tenants_of_one_schema_share_one_plan_and_any_difference_keeps_its_own() {
        let shared = SharedPlans::default();
        let first = shared.share(plan_of(CRM));
        let second = shared.share(plan_of(CRM));
        assert!(std::sync::Arc::ptr_eq(&first, &second));
        // One column more (a tenant migrated ahead), or one declared type apart.
        let migrated = shared.share(plan_of(&format!(
            "{CRM} ALTER TABLE leads ADD COLUMN source TEXT;"
        )));
        assert!(!std::sync::Arc::ptr_eq(&first, &migrated));
        let typed = shared.share(plan_of(&CRM.replace("DATETIME", "TEXT")));
        assert!(!std::sync::Arc::ptr_eq(&first, &typed));
        assert_eq!(typed.tables[1].columns[2].conv.ty, PgType::Text);
        // A plan no tenant holds any more is not kept.
        drop((first, second, migrated, typed));
        let again = shared.share(plan_of(CRM));
        assert_eq!(std::sync::Arc::strong_count(&again), 1);
        assert_eq!(shared.plans.lock().map(|p| p.len()).unwrap_or(0), 1);
    }
}
