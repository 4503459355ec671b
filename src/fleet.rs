//! A fleet: many SQLite files, one per tenant, moved into one Postgres. Which files belong to
//! it (a glob or a list), and each tenant's name and Postgres schema (a template over the
//! file's name), checked before anything is touched: a name Postgres would refuse, cut or
//! share between two tenants is an error naming both files.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The files of a fleet, as the config file names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Files {
    /// A glob (`tenants/*.db`); files that appear later belong to the fleet too.
    Glob(String),
    /// Exactly these files.
    List(Vec<PathBuf>),
}

/// What the config file says of a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Its files.
    pub files: Files,
    /// The Postgres schema of each tenant: `{stem}` (the file name without its extension),
    /// `{name}` (the file name) and `{parent}` (its directory's name) are filled in.
    pub schema: String,
    /// Each tenant's name (`--tenant NAME`), by the same placeholders.
    pub name: String,
    /// How the tenants' tables are laid out on Postgres.
    pub layout: Layout,
    /// Each tenant's cutover is one way (no capture on Postgres, no fallback).
    pub one_way: bool,
}

/// How a fleet's tables are laid out on Postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Each tenant's tables in a schema of its own (Citus: schema-based sharding).
    Schemas,
    /// One set of tables for all, each row naming its tenant in `column`, which leads every
    /// key (Citus: tables distributed by that column).
    Shared {
        /// The tenant column.
        column: String,
    },
}

/// The default tenant column of the shared-tables layout.
pub const DEFAULT_TENANT_COLUMN: &str = "tenant_id";

/// The default schema of the shared-tables layout.
pub const DEFAULT_SHARED_SCHEMA: &str = "public";

/// The default schema template.
pub const DEFAULT_SCHEMA: &str = "tenant_{stem}";

/// The default tenant name template.
pub const DEFAULT_NAME: &str = "{stem}";

/// One tenant: a SQLite file and where its tables go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// Its name (`--tenant NAME`): by default the file's stem.
    pub name: String,
    /// Its SQLite file.
    pub source: PathBuf,
    /// The Postgres schema its tables go into.
    pub schema: String,
    /// Whether the file is there (a listed file that is missing is reported, never taken for
    /// an emptied database).
    pub present: bool,
}

/// Why a fleet cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// The glob does not parse.
    #[error("the fleet's files glob '{glob}' is not valid: {why}")]
    BadGlob {
        /// The glob.
        glob: String,
        /// Why.
        why: String,
    },
    /// A directory the glob walks cannot be read.
    #[error("cannot list the fleet's files under {path}: {why}")]
    Unreadable {
        /// Where.
        path: String,
        /// Why.
        why: String,
    },
    /// The template names a placeholder there is none of.
    #[error(
        "the fleet's schema template '{template}' has {{{placeholder}}}, which is none of {{stem}}, {{name}}, {{parent}}"
    )]
    UnknownPlaceholder {
        /// The template.
        template: String,
        /// The unknown name.
        placeholder: String,
    },
    /// A tenant's schema name Postgres would refuse or cut.
    #[error(
        "tenant file {file}: schema name '{schema}' {why}; change the fleet's schema template (now '{template}') or rename the file"
    )]
    BadSchema {
        /// The file.
        file: String,
        /// The name made from the template.
        schema: String,
        /// What is wrong with it.
        why: String,
        /// The template.
        template: String,
    },
    /// The shared-tables layout's schema differs from tenant to tenant.
    #[error(
        "the fleet's layout is shared tables, and its schema template '{template}' names a schema per file ({file} gets '{schema}'); give one schema for all (schema = \"public\"), or use layout = \"schemas\" for a schema per tenant"
    )]
    SharedSchemaVaries {
        /// The template.
        template: String,
        /// A file.
        file: String,
        /// Its schema.
        schema: String,
    },
    /// The shared-tables layout's tenant column cannot be a Postgres column.
    #[error(
        "the fleet's tenant column '{column}' {why}; name another (tenant_column = \"tenant_id\")"
    )]
    BadTenantColumn {
        /// The name.
        column: String,
        /// What is wrong with it.
        why: String,
    },
    /// Two tenants would share a name or a schema.
    #[error(
        "tenant files {first} and {second} both become {what} '{name}'; rename one, or use name and schema templates that tell them apart (name = \"{{parent}}\", schema = \"tenant_{{parent}}\" when each tenant's file sits in a directory of its own)"
    )]
    Collision {
        /// One file.
        first: String,
        /// The other.
        second: String,
        /// `the tenant` or `the schema`.
        what: &'static str,
        /// The shared name.
        name: String,
    },
}

/// The tenants of a fleet, in file order, each with its schema, after every check.
pub fn tenants(spec: &Spec) -> Result<Vec<Tenant>, FleetError> {
    let files = match &spec.files {
        Files::Glob(g) => expand(g)?,
        Files::List(l) => l.clone(),
    };
    let shared = match &spec.layout {
        Layout::Schemas => false,
        Layout::Shared { column } => {
            let why = if column.is_empty() {
                Some("is empty")
            } else if column.len() > 63 {
                Some("is longer than the 63 bytes Postgres keeps")
            } else if column.contains('\0') {
                Some("holds a NUL byte")
            } else if column.starts_with("_sqlite2pg") {
                Some("starts with _sqlite2pg, which sqlite2pg keeps for itself")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(FleetError::BadTenantColumn {
                    column: column.clone(),
                    why: why.into(),
                });
            }
            true
        }
    };
    let mut out: Vec<Tenant> = Vec::with_capacity(files.len());
    // Names and schemas taken so far, without case, and by which tenant (its index in `out`):
    // a fleet of thousands is listed at every rescan.
    let mut names: std::collections::HashMap<String, usize> = Default::default();
    let mut schemas: std::collections::HashMap<String, usize> = Default::default();
    for source in files {
        let schema = fill(&spec.schema, &source)?;
        if shared && schema != spec.schema {
            return Err(FleetError::SharedSchemaVaries {
                template: spec.schema.clone(),
                file: source.display().to_string(),
                schema,
            });
        }
        let bad = |why: &str| FleetError::BadSchema {
            file: source.display().to_string(),
            schema: schema.clone(),
            why: why.to_string(),
            template: spec.schema.clone(),
        };
        if schema.is_empty() {
            return Err(bad("is empty"));
        }
        if schema.len() > 63 {
            return Err(bad(
                "is longer than the 63 bytes Postgres keeps (two tenants could share what is left)",
            ));
        }
        if schema.contains('\0') {
            return Err(bad("holds a NUL byte"));
        }
        let lower = schema.to_lowercase();
        if lower.starts_with("pg_") {
            return Err(bad("starts with pg_, which Postgres keeps for itself"));
        }
        // One shared schema is every tenant's, so it may be the default one.
        let not_tenants: &[&str] = if shared {
            &["sqlite2pg", "information_schema"]
        } else {
            &["sqlite2pg", "information_schema", "public"]
        };
        if not_tenants.contains(&lower.as_str()) {
            return Err(bad("is a schema that is not a tenant's"));
        }
        let name = fill(&spec.name, &source)?;
        if name.is_empty() {
            return Err(bad_name(&source, &spec.name));
        }
        let clash = match names.get(&name.to_lowercase()) {
            Some(i) => Some((*i, "the tenant", name.clone())),
            None => schemas
                .get(&lower)
                .filter(|_| !shared)
                .map(|i| (*i, "the schema", schema.clone())),
        };
        if let Some((i, what, name)) = clash {
            return Err(FleetError::Collision {
                first: out[i].source.display().to_string(),
                second: source.display().to_string(),
                what,
                name,
            });
        }
        names.insert(name.to_lowercase(), out.len());
        schemas.insert(lower, out.len());
        out.push(Tenant {
            present: source.is_file(),
            name,
            source,
            schema,
        });
    }
    Ok(out)
}

fn bad_name(source: &Path, template: &str) -> FleetError {
    FleetError::BadSchema {
        file: source.display().to_string(),
        schema: String::new(),
        why: format!("has an empty tenant name (name template '{template}')"),
        template: template.to_string(),
    }
}

/// The files a glob names now, sorted.
fn expand(pattern: &str) -> Result<Vec<PathBuf>, FleetError> {
    let paths = glob::glob(pattern).map_err(|e| FleetError::BadGlob {
        glob: pattern.to_string(),
        why: e.to_string(),
    })?;
    let mut out = Vec::new();
    for p in paths {
        let p = p.map_err(|e| FleetError::Unreadable {
            path: e.path().display().to_string(),
            why: e.error().to_string(),
        })?;
        if !is_companion(&p) && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// One of SQLite's own files beside a database (its WAL, the WAL's shared memory, a rollback
/// journal): never a tenant, and its coming and going changes nothing in the fleet.
pub fn is_companion(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    ["-wal", "-shm", "-journal"]
        .iter()
        .any(|s| name.ends_with(s))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The template with `{stem}`, `{name}` and `{parent}` of `path` filled in.
fn fill(template: &str, path: &Path) -> Result<String, FleetError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let value = match &after[..close] {
            "stem" => stem(path),
            "name" => path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            "parent" => path
                .parent()
                .and_then(Path::file_name)
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            other => {
                return Err(FleetError::UnknownPlaceholder {
                    template: template.to_string(),
                    placeholder: other.to_string(),
                });
            }
        };
        out.push_str(&value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(files: Files, schema: &str) -> Spec {
        Spec {
            files,
            schema: schema.to_string(),
            name: DEFAULT_NAME.to_string(),
            layout: Layout::Schemas,
            one_way: false,
        }
    }

    fn touch(dir: &Path, names: &[&str]) {
        for n in names {
            let p = dir.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
    }

    #[test]
    fn a_glob_names_each_file_once_with_its_schema() {
        let dir = tempfile::tempdir().unwrap();
        touch(
            dir.path(),
            &[
                "bot-b.db",
                "bot-a.db",
                "bot-a.db-wal",
                "bot-a.db-journal",
                "notes.txt",
            ],
        );
        let glob = format!("{}/bot-*.db*", dir.path().display());
        let got = tenants(&spec(Files::Glob(glob), DEFAULT_SCHEMA)).unwrap();
        let names: Vec<(&str, &str, bool)> = got
            .iter()
            .map(|t| (t.name.as_str(), t.schema.as_str(), t.present))
            .collect();
        assert_eq!(
            names,
            [
                ("bot-a", "tenant_bot-a", true),
                ("bot-b", "tenant_bot-b", true)
            ]
        );
    }

    #[test]
    fn a_listed_file_that_is_missing_is_a_tenant_not_present() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), &["a.db"]);
        let files = Files::List(vec![dir.path().join("a.db"), dir.path().join("gone.db")]);
        let got = tenants(&spec(files, DEFAULT_SCHEMA)).unwrap();
        assert_eq!(
            got.iter().map(|t| t.present).collect::<Vec<_>>(),
            [true, false]
        );
    }

    #[test]
    fn names_postgres_would_refuse_cut_or_share_are_errors_naming_the_files() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), &["eu/shop.db", "us/shop.db", "Shop.db", "x.db"]);
        let p = |n: &str| dir.path().join(n);
        // Same stem in two directories: one tenant name, one schema.
        let err = tenants(&spec(
            Files::List(vec![p("eu/shop.db"), p("us/shop.db")]),
            "t_{parent}_{stem}",
        ))
        .unwrap_err();
        assert!(
            matches!(
                &err,
                FleetError::Collision {
                    what: "the tenant",
                    ..
                }
            ),
            "{err}"
        );
        // Named by their directories, as the error advises, they are two tenants.
        let by_dir = Spec {
            name: "{parent}".into(),
            ..spec(
                Files::List(vec![p("eu/shop.db"), p("us/shop.db")]),
                "tenant_{parent}",
            )
        };
        let got = tenants(&by_dir).unwrap();
        assert_eq!(
            got.iter()
                .map(|t| (t.name.as_str(), t.schema.as_str()))
                .collect::<Vec<_>>(),
            [("eu", "tenant_eu"), ("us", "tenant_us")]
        );
        // Names that differ only in case are one name to an operator.
        let err = tenants(&spec(
            Files::List(vec![p("eu/shop.db"), p("Shop.db")]),
            "{stem}",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("eu/shop.db"), "{err}");
        assert!(err.to_string().contains("Shop.db"), "{err}");
        // A template without the file's name puts every tenant in one schema.
        let err =
            tenants(&spec(Files::List(vec![p("x.db"), p("Shop.db")]), "tenants")).unwrap_err();
        assert!(
            matches!(
                &err,
                FleetError::Collision {
                    what: "the schema",
                    ..
                }
            ),
            "{err}"
        );
        for (template, why) in [
            ("pg_{stem}", "pg_"),
            ("sqlite2pg", "not a tenant's"),
            (&*format!("{}{{stem}}", "t".repeat(63)), "63 bytes"),
            ("{nope}", "none of"),
        ] {
            let err = tenants(&spec(Files::List(vec![p("x.db")]), template)).unwrap_err();
            assert!(err.to_string().contains(why), "{template}: {err}");
        }
    }

    #[test]
    fn the_shared_layout_puts_every_tenant_in_one_schema_and_checks_its_column() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), &["a.db", "b.db"]);
        let files = Files::List(vec![dir.path().join("a.db"), dir.path().join("b.db")]);
        let shared = |schema: &str, column: &str| Spec {
            layout: Layout::Shared {
                column: column.into(),
            },
            ..spec(files.clone(), schema)
        };
        let got = tenants(&shared(DEFAULT_SHARED_SCHEMA, DEFAULT_TENANT_COLUMN)).unwrap();
        assert_eq!(
            got.iter()
                .map(|t| (t.name.as_str(), t.schema.as_str()))
                .collect::<Vec<_>>(),
            [("a", "public"), ("b", "public")]
        );
        let err = tenants(&shared(DEFAULT_SCHEMA, DEFAULT_TENANT_COLUMN)).unwrap_err();
        assert!(
            matches!(err, FleetError::SharedSchemaVaries { .. }),
            "{err}"
        );
        for column in ["", "_sqlite2pg_chunk", &"c".repeat(64)] {
            let err = tenants(&shared("crm", column)).unwrap_err();
            assert!(matches!(err, FleetError::BadTenantColumn { .. }), "{err}");
        }
    }

    #[test]
    fn a_bad_glob_is_named() {
        let err = tenants(&spec(Files::Glob("tenants/[*.db".into()), DEFAULT_SCHEMA)).unwrap_err();
        assert!(matches!(err, FleetError::BadGlob { .. }), "{err}");
    }
}
