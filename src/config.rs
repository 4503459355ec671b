//! Configuration: command-line flags, environment and an optional TOML file, merged and validated
//! without touching either database.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::conninfo::TargetUrl;
use crate::error::{Error, ErrorKind, Result};
use crate::model::SourceEncoding;

/// A per-column override: a target type, or a way to read the source values, or both. A
/// migration keeps the ones its first `run` was given (`sqlite2pg.setting`), in this form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cast {
    /// The source table.
    pub table: String,
    /// The source column.
    pub column: String,
    /// The target type to create (only used when sqlite2pg creates the table).
    #[serde(rename = "type")]
    pub target_type: Option<String>,
    /// How to read numbers stored in a date or time column.
    pub encoding: Option<SourceEncoding>,
}

impl std::fmt::Display for Cast {
    /// As the flag is written: `TABLE.COLUMN=TYPE:ENCODING`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.table.contains(['.', '"']) {
            write!(f, "\"{}\"", self.table.replace('"', "\"\""))?;
        } else {
            f.write_str(&self.table)?;
        }
        write!(f, ".{}=", self.column)?;
        let encoding = self.encoding.map(SourceEncoding::name);
        match (&self.target_type, encoding) {
            (Some(t), Some(e)) => write!(f, "{t}:{e}"),
            (Some(t), None) => f.write_str(t),
            (None, Some(e)) => f.write_str(e),
            (None, None) => Ok(()),
        }
    }
}

impl Cast {
    /// Whether two casts name the same column (SQLite matches column names without case).
    fn same_column(&self, other: &Cast) -> bool {
        self.table == other.table && self.column.eq_ignore_ascii_case(&other.column)
    }
}

impl Cast {
    /// Parses `TABLE.COLUMN=SPEC`, SPEC being a Postgres type, an encoding
    /// (`epoch_s`, `epoch_ms`, `epoch_us`, `julian`) or `TYPE:ENCODING`.
    pub fn parse(spec: &str) -> Result<Cast> {
        let bad = |why: &str| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "invalid --cast '{spec}': {why}; expected TABLE.COLUMN=TYPE, TABLE.COLUMN=ENCODING or TABLE.COLUMN=TYPE:ENCODING (encodings: epoch_s, epoch_ms, epoch_us, julian)"
                ),
            )
        };
        let (lhs, rhs) = spec.rsplit_once('=').ok_or_else(|| bad("no '='"))?;
        let (table, column) = split_qualified(lhs).ok_or_else(|| bad("no TABLE.COLUMN"))?;
        let rhs = rhs.trim();
        if rhs.is_empty() {
            return Err(bad("nothing after '='"));
        }
        let (ty, enc) = match rhs.rsplit_once(':') {
            Some((t, e)) => (Some(t.trim()), Some(e.trim())),
            None => match parse_encoding(rhs) {
                Some(_) => (None, Some(rhs)),
                None => (Some(rhs), None),
            },
        };
        let encoding = match enc {
            Some(e) => {
                Some(parse_encoding(e).ok_or_else(|| bad(&format!("unknown encoding '{e}'")))?)
            }
            None => None,
        };
        Ok(Cast {
            table,
            column,
            target_type: ty.map(|t| t.to_ascii_lowercase()),
            encoding,
        })
    }
}

fn parse_encoding(s: &str) -> Option<SourceEncoding> {
    match s.to_ascii_lowercase().as_str() {
        "epoch_s" | "epoch" | "unixepoch" => Some(SourceEncoding::EpochS),
        "epoch_ms" => Some(SourceEncoding::EpochMs),
        "epoch_us" => Some(SourceEncoding::EpochUs),
        "julian" | "julianday" => Some(SourceEncoding::Julian),
        _ => None,
    }
}

/// Splits `table.column`, where the table may be double-quoted to contain dots.
fn split_qualified(s: &str) -> Option<(String, String)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('"') {
        let mut table = String::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if matches!(chars.peek(), Some((_, '"'))) {
                    table.push('"');
                    chars.next();
                    continue;
                }
                let after = &rest[i + 1..];
                let column = after.strip_prefix('.')?;
                return (!column.is_empty()).then(|| (table, column.to_string()));
            }
            table.push(c);
        }
        None
    } else {
        let (t, c) = s.split_once('.')?;
        (!t.is_empty() && !c.is_empty()).then(|| (t.to_string(), c.to_string()))
    }
}

/// The optional TOML configuration file; every key mirrors a command-line flag.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--source`
    pub source: Option<PathBuf>,
    /// `--target`
    pub target: Option<String>,
    /// `--target-schema`
    pub target_schema: Option<String>,
    /// `--include`
    #[serde(default)]
    pub include: Vec<String>,
    /// `--exclude`
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `--cast`, as a table of `"table.column" = "spec"`.
    #[serde(default)]
    pub cast: std::collections::BTreeMap<String, String>,
    /// `--equivalent-migration`, as a table of `"sqlite_version" = "postgres_version"`.
    #[serde(default)]
    pub equivalent_migration: std::collections::BTreeMap<String, String>,
    /// `--chunk-rows`
    pub chunk_rows: Option<usize>,
    /// `--busy-timeout-ms`
    pub busy_timeout_ms: Option<u64>,
    /// `run --poll-interval-ms`
    pub poll_interval_ms: Option<u64>,
    /// `run --batch-changes`
    pub batch_changes: Option<usize>,
    /// `run --metrics-addr`
    pub metrics_addr: Option<String>,
    /// `run --max-lag-seconds`
    pub max_lag_seconds: Option<f64>,
    /// `--log-format` (`human` or `json`)
    pub log_format: Option<String>,
    /// `[fleet]`: many SQLite files, one per tenant.
    pub fleet: Option<FleetFile>,
}

/// `[fleet]` in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// A glob (`"tenants/*.db"`) or a list of files.
    pub files: FleetFiles,
    /// The schema template (default `tenant_{stem}`).
    pub schema: Option<String>,
    /// The tenant name template (default `{stem}`).
    pub name: Option<String>,
    /// `schemas` (a schema per tenant, the default) or `shared` (one set of tables, a tenant
    /// column leading every key).
    pub layout: Option<FleetLayout>,
    /// The shared layout's tenant column (default `tenant_id`).
    pub tenant_column: Option<String>,
    /// Each tenant's cutover is one way: no capture on Postgres, so no fallback (what Citus
    /// takes: a trigger on a distributed table is refused). The shared layout's always is.
    pub one_way: Option<bool>,
}

/// `layout` of `[fleet]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetLayout {
    /// A schema per tenant.
    Schemas,
    /// Shared tables with a tenant column.
    Shared,
}

/// `files` of `[fleet]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FleetFiles {
    /// A glob.
    Glob(String),
    /// A list of files.
    List(Vec<PathBuf>),
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                format!("cannot read config file {}", path.display()),
                e,
            )
        })?;
        toml::from_str(&text).map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                format!("config file {} is not valid: {e}", path.display()),
                e,
            )
        })
    }
}

/// The merged configuration every command works from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite file.
    pub source: PathBuf,
    /// The Postgres connection string, if given.
    pub target: Option<TargetUrl>,
    /// The Postgres schema that receives the tables.
    pub target_schema: String,
    /// Tables to replicate (all when empty).
    pub include: Vec<String>,
    /// Tables to leave out.
    pub exclude: Vec<String>,
    /// Per-column overrides.
    pub casts: Vec<Cast>,
    /// Applied migrations taken as the same on both sides: (SQLite's, Postgres').
    pub equivalent_migrations: Vec<(String, String)>,
    /// Rows per snapshot chunk (one SQLite read transaction, one Postgres transaction).
    pub chunk_rows: usize,
    /// How long a SQLite read waits for the app's write lock before retrying.
    pub busy_timeout_ms: u64,
    /// Fallback poll of the changelog.
    pub poll_interval_ms: u64,
    /// Most changelog rows per applied batch.
    pub batch_changes: usize,
    /// Where to serve /metrics and /healthz, if anywhere.
    pub metrics_addr: Option<String>,
    /// /healthz turns unhealthy above this lag.
    pub max_lag_seconds: f64,
    /// Many SQLite files, one per tenant, instead of `source` (from `[fleet]`).
    pub fleet: Option<crate::fleet::Spec>,
    /// `--tenant`: the one tenant of the fleet a command is about.
    pub tenant: Option<String>,
    /// In a fleet's shared-tables layout, the column naming each row's tenant.
    pub tenant_column: Option<String>,
    /// A fleet tenant's cutover is one way (`[fleet] one_way`, or the shared layout).
    pub one_way: bool,
}

/// Defaults of the settings that have one (documented in the README and by `config check`).
pub mod defaults {
    /// `target_schema`
    pub const TARGET_SCHEMA: &str = "public";
    /// `chunk_rows`
    pub const CHUNK_ROWS: usize = 20_000;
    /// `busy_timeout_ms`
    pub const BUSY_TIMEOUT_MS: u64 = 5_000;
    /// `poll_interval_ms`
    pub const POLL_INTERVAL_MS: u64 = 1_000;
    /// `batch_changes`
    pub const BATCH_CHANGES: usize = 10_000;
    /// `max_lag_seconds`
    pub const MAX_LAG_SECONDS: f64 = 30.0;
}

/// The settings given on the command line, which win over the file's.
#[derive(Debug, Default)]
pub struct Flags {
    /// `--source`
    pub source: Option<PathBuf>,
    /// `--target`
    pub target: Option<String>,
    /// `--target-schema`
    pub target_schema: Option<String>,
    /// `--include` (empty: the file's)
    pub include: Vec<String>,
    /// `--exclude` (empty: the file's)
    pub exclude: Vec<String>,
    /// `--cast`, each `TABLE.COLUMN=SPEC`, after the file's.
    pub casts: Vec<String>,
    /// `--equivalent-migration`, each `SQLITE_VERSION=POSTGRES_VERSION`, after the file's.
    pub equivalent_migrations: Vec<String>,
    /// `--chunk-rows`
    pub chunk_rows: Option<usize>,
    /// `--busy-timeout-ms`
    pub busy_timeout_ms: Option<u64>,
    /// `--tenant`
    pub tenant: Option<String>,
}

impl Config {
    /// The command line over the file over the defaults (the environment reaches both
    /// through clap).
    pub fn merge(flags: Flags, file: FileConfig) -> Result<Config> {
        let fleet = match file.fleet {
            None => None,
            Some(f) => {
                let shared = f.layout == Some(FleetLayout::Shared);
                if !shared && f.tenant_column.is_some() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "[fleet] names a tenant_column, which only the shared-tables layout has: add layout = \"shared\", or drop tenant_column",
                    ));
                }
                if shared && f.one_way == Some(false) {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "[fleet] says one_way = false, but the shared-tables layout's cutover is always one way (a capture on a shared table would take every tenant's writes): drop one_way, or use layout = \"schemas\"",
                    ));
                }
                let (layout, default_schema) = if shared {
                    (
                        crate::fleet::Layout::Shared {
                            column: f
                                .tenant_column
                                .unwrap_or_else(|| crate::fleet::DEFAULT_TENANT_COLUMN.into()),
                        },
                        crate::fleet::DEFAULT_SHARED_SCHEMA,
                    )
                } else {
                    (crate::fleet::Layout::Schemas, crate::fleet::DEFAULT_SCHEMA)
                };
                Some(crate::fleet::Spec {
                    files: match f.files {
                        FleetFiles::Glob(g) => crate::fleet::Files::Glob(g),
                        FleetFiles::List(l) => crate::fleet::Files::List(l),
                    },
                    schema: f.schema.unwrap_or_else(|| default_schema.into()),
                    name: f.name.unwrap_or_else(|| crate::fleet::DEFAULT_NAME.into()),
                    one_way: shared || f.one_way.unwrap_or(false),
                    layout,
                })
            }
        };
        let source = flags.source.or(file.source);
        let source = match (source, &fleet) {
            (Some(_), Some(_)) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "both a SQLite file (--source or source) and a [fleet] are given: a fleet names its files itself; drop one",
                ));
            }
            (Some(s), None) => s,
            // Each tenant's own file takes its place (`Config::for_tenant`).
            (None, Some(_)) => PathBuf::new(),
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "no SQLite file given: pass --source PATH or set SQLITE2PG_SOURCE (or name a [fleet] in the config file)",
                ));
            }
        };
        if flags.tenant.is_some() && fleet.is_none() {
            return Err(Error::new(
                ErrorKind::Config,
                "--tenant names a tenant of a fleet, and the config file names no [fleet]",
            ));
        }
        let mut casts = Vec::new();
        for (k, v) in &file.cast {
            casts.push(Cast::parse(&format!("{k}={v}"))?);
        }
        for c in &flags.casts {
            casts.push(Cast::parse(c)?);
        }
        let mut equivalent_migrations: Vec<(String, String)> = file
            .equivalent_migration
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
        for e in &flags.equivalent_migrations {
            let pair = e
                .split_once('=')
                .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
                .filter(|(a, b)| !a.is_empty() && !b.is_empty());
            let Some(pair) = pair else {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "invalid --equivalent-migration '{e}': expected SQLITE_VERSION=POSTGRES_VERSION, each as `check` lists it (an Alembic revision id, a Django app.name)"
                    ),
                ));
            };
            equivalent_migrations.push(pair);
        }
        Ok(Config {
            source,
            target: flags.target.or(file.target).map(TargetUrl::new),
            target_schema: flags
                .target_schema
                .or(file.target_schema)
                .unwrap_or_else(|| defaults::TARGET_SCHEMA.into()),
            include: if flags.include.is_empty() {
                file.include
            } else {
                flags.include
            },
            exclude: if flags.exclude.is_empty() {
                file.exclude
            } else {
                flags.exclude
            },
            casts,
            equivalent_migrations,
            chunk_rows: flags
                .chunk_rows
                .or(file.chunk_rows)
                .unwrap_or(defaults::CHUNK_ROWS),
            busy_timeout_ms: flags
                .busy_timeout_ms
                .or(file.busy_timeout_ms)
                .unwrap_or(defaults::BUSY_TIMEOUT_MS),
            poll_interval_ms: file.poll_interval_ms.unwrap_or(defaults::POLL_INTERVAL_MS),
            batch_changes: file.batch_changes.unwrap_or(defaults::BATCH_CHANGES),
            metrics_addr: file.metrics_addr,
            max_lag_seconds: file.max_lag_seconds.unwrap_or(defaults::MAX_LAG_SECONDS),
            fleet,
            tenant: flags.tenant,
            tenant_column: None,
            one_way: false,
        })
    }

    /// Checks every setting without touching either database; each problem in words.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(t) = &self.target {
            // The TLS settings are ours (libpq's verify modes, certificate files): checked
            // apart, the rest by the Postgres client's own parser.
            let problem = match crate::conninfo::split(t.expose_secret()) {
                Err(e) => Some(e.to_string()),
                Ok((rest, _)) => <tokio_postgres::Config as std::str::FromStr>::from_str(&rest)
                    .err()
                    .map(|e| e.to_string()),
            };
            if let Some(e) = problem {
                out.push(format!(
                    "target {} is not a valid connection string: {e}",
                    t.redacted()
                ));
            }
        }
        if let Some(a) = &self.metrics_addr
            && a.parse::<std::net::SocketAddr>().is_err()
        {
            out.push(format!(
                "metrics_addr '{a}' is not HOST:PORT with a numeric host (e.g. 0.0.0.0:9187)"
            ));
        }
        if self.chunk_rows == 0 || self.batch_changes == 0 {
            out.push("chunk_rows and batch_changes must be at least 1".into());
        }
        if self.poll_interval_ms < 10 {
            out.push("poll_interval_ms must be at least 10".into());
        }
        // NaN counts as invalid too.
        if self.max_lag_seconds.is_nan() || self.max_lag_seconds < 0.0 {
            out.push("max_lag_seconds must be 0 or more".into());
        }
        for t in self.include.iter().filter(|t| self.exclude.contains(t)) {
            out.push(format!("table {t} is both included and excluded"));
        }
        if let Some(spec) = &self.fleet {
            match crate::fleet::tenants(spec) {
                Err(e) => out.push(e.to_string()),
                Ok(ts) => {
                    if let Some(name) = &self.tenant
                        && !ts.iter().any(|t| &t.name == name)
                    {
                        out.push(format!(
                            "--tenant {name}: the fleet has no such tenant (its tenants are its files' names without the extension)"
                        ));
                    }
                }
            }
        }
        for c in &self.casts {
            if let Some(ty) = &c.target_type
                && crate::typemap::parse_pg_type_name(ty).is_none()
            {
                out.push(format!(
                    "cast {}.{}: sqlite2pg cannot write the type '{ty}'",
                    c.table, c.column
                ));
            }
        }
        out
    }
}

impl Config {
    /// Whether a source table is selected by the include/exclude lists.
    pub fn selects(&self, table: &str) -> bool {
        let matches = |list: &[String]| list.iter().any(|t| t == table);
        (self.include.is_empty() || matches(&self.include)) && !matches(&self.exclude)
    }

    /// This configuration with the casts a migration was started with (`recorded`, kept in
    /// its state): a command given none takes those; one given others is refused, naming
    /// both, because the rows were written by the first ones. `None`: nothing recorded yet.
    pub fn with_recorded_casts(&self, recorded: Option<Vec<Cast>>) -> Result<Config> {
        let Some(recorded) = recorded else {
            return Ok(self.clone());
        };
        let mut cfg = self.clone();
        if self.casts.is_empty() {
            cfg.casts = recorded;
            return Ok(cfg);
        }
        let covers = |a: &[Cast], b: &[Cast]| {
            a.iter().all(|c| {
                b.iter()
                    .find(|o| o.same_column(c))
                    .is_some_and(|o| o.target_type == c.target_type && o.encoding == c.encoding)
            })
        };
        if covers(&self.casts, &recorded) && covers(&recorded, &self.casts) {
            return Ok(cfg);
        }
        let list = |casts: &[Cast]| {
            casts
                .iter()
                .map(|c| format!("--cast {c}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let started = if recorded.is_empty() {
            "without a --cast".to_string()
        } else {
            format!("with {}", list(&recorded))
        };
        Err(Error::new(
            ErrorKind::Config,
            format!(
                "this migration was started {started} (kept in the sqlite2pg schema in Postgres), and this command was given {}: the rows on Postgres were written the first way, and reading them another way would misjudge them. Give no --cast (the kept ones apply) or the same ones; to change a cast, start over (`sqlite2pg uninstall`, drop the copied tables, then `run` with the new one)",
                list(&self.casts)
            ),
        ))
    }

    /// This configuration for one tenant of its fleet: the tenant's file, into its schema.
    pub fn for_tenant(&self, t: &crate::fleet::Tenant) -> Config {
        Config {
            source: t.source.clone(),
            target_schema: t.schema.clone(),
            fleet: None,
            tenant: Some(t.name.clone()),
            tenant_column: self.fleet.as_ref().and_then(|f| match &f.layout {
                crate::fleet::Layout::Shared { column } => Some(column.clone()),
                crate::fleet::Layout::Schemas => None,
            }),
            one_way: self.fleet.as_ref().is_some_and(|f| f.one_way),
            ..self.clone()
        }
    }

    /// The tenant its state is kept under: '' for the one file of `--source`.
    pub fn tenant_id(&self) -> &str {
        self.tenant.as_deref().unwrap_or("")
    }

    /// The override for one column, if any.
    pub fn cast_for(&self, table: &str, column: &str) -> Option<&Cast> {
        self.casts
            .iter()
            .find(|c| c.table == table && c.column.eq_ignore_ascii_case(column))
    }

    /// The target connection string, or an error saying how to give one.
    pub fn require_target(&self) -> Result<&TargetUrl> {
        self.target.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "no Postgres target given: pass --target URL or set SQLITE2PG_TARGET (e.g. postgres://user:password@host:5432/dbname)",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_casts() {
        let c = Cast::parse("leads.created_at=epoch_ms").unwrap();
        assert_eq!(c.table, "leads");
        assert_eq!(c.encoding, Some(SourceEncoding::EpochMs));
        assert_eq!(c.target_type, None);
        let c = Cast::parse("clients.tags=jsonb").unwrap();
        assert_eq!(c.target_type.as_deref(), Some("jsonb"));
        let c = Cast::parse("\"my.table\".ts=timestamptz:epoch_s").unwrap();
        assert_eq!(c.table, "my.table");
        assert_eq!(c.target_type.as_deref(), Some("timestamptz"));
        assert_eq!(c.encoding, Some(SourceEncoding::EpochS));
        assert!(Cast::parse("nodot=jsonb").is_err());
        // Kept casts are named as they were given.
        for spec in [
            "\"my.table\".ts=timestamptz:epoch_s",
            "t.c=jsonb",
            "t.c=julian",
        ] {
            assert_eq!(Cast::parse(spec).unwrap().to_string(), spec);
        }
        assert!(Cast::parse("t.c=ts:nonsense").is_err());
    }
}
