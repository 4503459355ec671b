//! The frameworks that make apps' schemas, recognised by the tables their migrations leave in
//! the SQLite file: which one made it, the command that makes its own Postgres schema (the path
//! `check` recommends), and the table whose rows say which migrations are applied.

use serde::Serialize;

use crate::model::SourceEncoding;
use crate::model::{PgType, SourceTable};
use crate::typemap;

/// A framework whose migrations leave a marker in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framework {
    /// Django's ORM.
    Django,
    /// SQLAlchemy with Alembic.
    Alembic,
    /// Ruby on Rails' ActiveRecord.
    Rails,
    /// Prisma Migrate.
    Prisma,
    /// Knex.js.
    Knex,
    /// Sequelize (sequelize-cli).
    Sequelize,
    /// TypeORM.
    TypeOrm,
    /// Laravel's Eloquent.
    Laravel,
    /// Elixir's Ecto.
    Ecto,
    /// Rust's Diesel.
    Diesel,
    /// Rust's sqlx.
    Sqlx,
}

/// What sqlite2pg knows of one framework.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    /// Which framework.
    pub framework: Framework,
    /// Its name, for people.
    pub name: &'static str,
    /// Tables that must all be there, each with columns it must have.
    markers: &'static [(&'static str, &'static [&'static str])],
    /// A table whose presence means another framework (Rails' `schema_migrations` beside
    /// `ar_internal_metadata` is not Ecto's).
    unless: Option<&'static str>,
    /// The table naming the applied migrations.
    pub versions: &'static str,
    /// The columns that name one applied migration.
    pub version_columns: &'static [&'static str],
    /// A condition a row must meet to count as applied (the same SQL in both databases).
    pub applied: Option<&'static str>,
    /// How the app makes its schema on Postgres.
    pub migrate: &'static str,
}

const SPECS: &[Spec] = &[
    Spec {
        framework: Framework::Django,
        name: "Django",
        markers: &[("django_migrations", &["app", "name"])],
        unless: None,
        versions: "django_migrations",
        version_columns: &["app", "name"],
        applied: None,
        migrate: "point DATABASES['default'] at Postgres (ENGINE django.db.backends.postgresql), then `python manage.py migrate`",
    },
    Spec {
        framework: Framework::Alembic,
        name: "Alembic (SQLAlchemy)",
        markers: &[("alembic_version", &["version_num"])],
        unless: None,
        versions: "alembic_version",
        version_columns: &["version_num"],
        applied: None,
        migrate: "set sqlalchemy.url (alembic.ini or env.py) to postgresql+psycopg://..., then `alembic upgrade head`",
    },
    Spec {
        framework: Framework::Rails,
        name: "Rails (ActiveRecord)",
        markers: &[
            ("schema_migrations", &["version"]),
            ("ar_internal_metadata", &["key", "value"]),
        ],
        unless: None,
        versions: "schema_migrations",
        version_columns: &["version"],
        applied: None,
        migrate: "set the production database to the postgresql adapter (DATABASE_URL=postgres://...), then `bin/rails db:create db:migrate`",
    },
    Spec {
        framework: Framework::Prisma,
        name: "Prisma",
        markers: &[(
            "_prisma_migrations",
            &["migration_name", "finished_at", "rolled_back_at"],
        )],
        unless: None,
        versions: "_prisma_migrations",
        version_columns: &["migration_name"],
        applied: Some("finished_at IS NOT NULL AND rolled_back_at IS NULL"),
        migrate: "set the datasource provider to \"postgresql\" and DATABASE_URL to Postgres, then `npx prisma migrate deploy` (Prisma's migrations are per provider: a SQLite history needs a Postgres baseline, `npx prisma migrate diff --from-empty --to-schema-datamodel prisma/schema.prisma --script`)",
    },
    Spec {
        framework: Framework::Knex,
        name: "Knex",
        markers: &[("knex_migrations", &["name", "batch"])],
        unless: None,
        versions: "knex_migrations",
        version_columns: &["name"],
        applied: None,
        migrate: "set the knexfile's client to \"pg\" with the Postgres connection, then `npx knex migrate:latest`",
    },
    Spec {
        framework: Framework::Sequelize,
        name: "Sequelize",
        markers: &[("SequelizeMeta", &["name"])],
        unless: None,
        versions: "SequelizeMeta",
        version_columns: &["name"],
        applied: None,
        migrate: "set the config's dialect to \"postgres\" with the Postgres connection, then `npx sequelize-cli db:migrate`",
    },
    Spec {
        framework: Framework::TypeOrm,
        name: "TypeORM",
        markers: &[("migrations", &["timestamp", "name"])],
        unless: None,
        versions: "migrations",
        version_columns: &["name"],
        applied: None,
        migrate: "set the DataSource's type to \"postgres\", then `npx typeorm migration:run -d <data-source>`",
    },
    Spec {
        framework: Framework::Laravel,
        name: "Laravel",
        markers: &[("migrations", &["migration", "batch"])],
        unless: None,
        versions: "migrations",
        version_columns: &["migration"],
        applied: None,
        migrate: "set DB_CONNECTION=pgsql (and DB_HOST, DB_DATABASE, ...), then `php artisan migrate`",
    },
    Spec {
        framework: Framework::Ecto,
        name: "Ecto",
        markers: &[("schema_migrations", &["version", "inserted_at"])],
        unless: Some("ar_internal_metadata"),
        versions: "schema_migrations",
        version_columns: &["version"],
        applied: None,
        migrate: "use the Ecto.Adapters.Postgres adapter in the Repo's config, then `mix ecto.create && mix ecto.migrate`",
    },
    Spec {
        framework: Framework::Diesel,
        name: "Diesel",
        markers: &[("__diesel_schema_migrations", &["version"])],
        unless: None,
        versions: "__diesel_schema_migrations",
        version_columns: &["version"],
        applied: None,
        migrate: "`DATABASE_URL=postgres://... diesel migration run` (with the pg feature; SQLite migrations in SQL may need a Postgres copy)",
    },
    Spec {
        framework: Framework::Sqlx,
        name: "sqlx",
        markers: &[("_sqlx_migrations", &["version", "success"])],
        unless: None,
        versions: "_sqlx_migrations",
        version_columns: &["version"],
        applied: Some("success"),
        migrate: "`DATABASE_URL=postgres://... sqlx migrate run` (SQLite migrations in SQL may need a Postgres copy)",
    },
];

/// How a framework's Postgres backend types a column that its SQLite declaration names, where
/// the declaration decides it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The Postgres type.
    pub ty: PgType,
    /// How the framework writes the values into SQLite, when not as text.
    pub encoding: Option<SourceEncoding>,
    /// Why, for the report.
    pub why: String,
    /// Something the mapping assumes that the file cannot show (said by `check`).
    pub assumes: Option<Assumption>,
}

/// What a mapping takes for granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assumption {
    /// Django stores aware datetimes in UTC without an offset (USE_TZ=True, its default).
    UtcDatetimes,
    /// The app's own `timestamptz` columns hold UTC where SQLite's text has no offset
    /// (SQLAlchemy's `DateTime(timezone=True)`, Django with USE_TZ=True).
    NaiveIsUtc,
    /// The declaration has no precision or scale (Django's `decimal`).
    DecimalScale,
}

/// The type `frameworks`' Postgres backends give a column declared `decl` (`json_checked`:
/// its only CHECK asks for valid JSON), or `None` where the plain mapping stands.
pub fn map_column(frameworks: &[&Spec], decl: &str, json_checked: bool) -> Option<Mapped> {
    let has = |f| frameworks.iter().any(|s| s.framework == f);
    let d = typemap::parse_decltype(decl);
    let mapped = |ty, why: &str, assumes| {
        Some(Mapped {
            ty,
            encoding: None,
            why: why.to_string(),
            assumes,
        })
    };
    if has(Framework::Django) {
        match (d.name.as_str(), d.args.as_slice()) {
            ("CHAR", [32]) => {
                return mapped(
                    PgType::Uuid,
                    "Django's UUIDField: uuid (32 hex digits in SQLite, given back so)",
                    None,
                );
            }
            ("DATETIME", []) => {
                return mapped(
                    PgType::Timestamptz { precision: None },
                    "Django's DateTimeField: timestamptz, values read as UTC",
                    Some(Assumption::UtcDatetimes),
                );
            }
            ("DECIMAL", []) => {
                return mapped(
                    PgType::Numeric { typmod: None },
                    "Django's DecimalField: numeric, scale unknown",
                    Some(Assumption::DecimalScale),
                );
            }
            ("TEXT", []) if json_checked => {
                return mapped(PgType::Jsonb, "Django's JSONField: jsonb", None);
            }
            _ => {}
        }
    }
    if has(Framework::Alembic) && d.name == "CHAR" && d.args == [32] {
        // SQLAlchemy's `Uuid` on SQLite (a String(32) is VARCHAR): on Postgres it binds uuid
        // parameters, which a varchar column refuses.
        return mapped(
            PgType::Uuid,
            "SQLAlchemy's Uuid: uuid (32 hex digits in SQLite, given back so)",
            None,
        );
    }
    if has(Framework::Prisma) && d.name == "DATETIME" {
        return Some(Mapped {
            ty: PgType::Timestamp { precision: Some(3) },
            encoding: Some(SourceEncoding::EpochMs),
            why: "Prisma's DateTime: timestamp(3), integers read as milliseconds since 1970 UTC"
                .into(),
            assumes: None,
        });
    }
    if json_checked && matches!(typemap::map_decltype(decl), PgType::Text) && !frameworks.is_empty()
    {
        return mapped(PgType::Jsonb, "JSON under a JSON_VALID CHECK: jsonb", None);
    }
    None
}

/// The column of a CHECK that only asks for valid JSON (Django's JSONField writes
/// `JSON_VALID("data") OR "data" IS NULL`), if that is all it asks.
pub fn json_valid_column(check: &str) -> Option<String> {
    let flat: String = check
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '"' | '`' | '[' | ']'))
        .flat_map(char::to_lowercase)
        .collect();
    let mut s = flat.as_str();
    while let Some(inner) = s.strip_prefix('(').and_then(|x| x.strip_suffix(')')) {
        s = inner;
    }
    let (call, rest) = s.split_once(')').unwrap_or((s, ""));
    let col = call.strip_prefix("json_valid(")?;
    let null_ok = format!("or{col}isnull");
    (!col.is_empty() && (rest.is_empty() || rest == null_ok)).then(|| col.to_string())
}

/// The frameworks whose markers the SQLite file's tables carry.
pub fn recognise(tables: &[SourceTable]) -> Vec<&'static Spec> {
    let table = |name: &str| tables.iter().find(|t| t.name.eq_ignore_ascii_case(name));
    let has = |name: &str, columns: &[&str]| {
        table(name).is_some_and(|t| {
            columns
                .iter()
                .all(|c| t.columns.iter().any(|tc| tc.name.eq_ignore_ascii_case(c)))
        })
    };
    SPECS
        .iter()
        .filter(|s| s.markers.iter().all(|(t, cols)| has(t, cols)))
        .filter(|s| s.unless.is_none_or(|u| table(u).is_none()))
        .collect()
}

/// The spec of `framework`.
pub fn spec(framework: Framework) -> &'static Spec {
    SPECS
        .iter()
        .find(|s| s.framework == framework)
        .unwrap_or(&SPECS[0])
}

/// Whether `table` is the migration-version table of one of `frameworks`.
pub fn is_version_table(frameworks: &[&Spec], table: &str) -> bool {
    frameworks
        .iter()
        .any(|s| s.versions.eq_ignore_ascii_case(table))
}

/// Applied migrations on one side and not the other: (only in SQLite, only in Postgres).
pub fn skew(sqlite: &[Vec<String>], postgres: &[Vec<String>]) -> (Vec<String>, Vec<String>) {
    let name = |v: &Vec<String>| v.join(".");
    let only = |a: &[Vec<String>], b: &[Vec<String>]| {
        let mut out: Vec<String> = a.iter().filter(|r| !b.contains(r)).map(name).collect();
        out.sort();
        out
    };
    (only(sqlite, postgres), only(postgres, sqlite))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SourceTable;

    /// The tables of a SQLite database made by `ddl`, read as sqlite2pg reads any file.
    fn tables(ddl: &str) -> Vec<SourceTable> {
        let conn = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        conn.execute_batch(ddl).expect("the DDL");
        crate::sqlite::schema::read_tables(&conn).expect("read the schema")
    }

    #[test]
    fn frameworks_are_told_apart_by_their_tables() {
        let names = |ddl: &str| -> Vec<Framework> {
            recognise(&tables(ddl))
                .iter()
                .map(|s| s.framework)
                .collect()
        };
        assert_eq!(
            names(
                "CREATE TABLE schema_migrations (version varchar PRIMARY KEY);
                 CREATE TABLE ar_internal_metadata (key varchar PRIMARY KEY, value varchar, created_at datetime(6));"
            ),
            [Framework::Rails]
        );
        assert_eq!(
            names(
                "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, inserted_at timestamp)"
            ),
            [Framework::Ecto]
        );
        assert_eq!(
            names(
                "CREATE TABLE migrations (id integer PRIMARY KEY, migration varchar, batch integer)"
            ),
            [Framework::Laravel]
        );
        assert_eq!(
            names(
                "CREATE TABLE migrations (id integer PRIMARY KEY, timestamp bigint, name varchar)"
            ),
            [Framework::TypeOrm]
        );
        assert_eq!(
            names(
                "CREATE TABLE django_migrations (id integer PRIMARY KEY, app varchar, name varchar, applied datetime)"
            ),
            [Framework::Django]
        );
        assert!(names("CREATE TABLE clients (id integer PRIMARY KEY, name text)").is_empty());
    }

    #[test]
    fn skew_names_each_side() {
        let s = vec![
            vec!["auth".into(), "0001_initial".into()],
            vec!["shop".into(), "0002_b".into()],
        ];
        let p = vec![
            vec!["auth".into(), "0001_initial".into()],
            vec!["shop".into(), "0003_c".into()],
        ];
        assert_eq!(
            skew(&s, &p),
            (
                vec!["shop.0002_b".to_string()],
                vec!["shop.0003_c".to_string()]
            )
        );
    }

    #[test]
    fn a_check_that_only_asks_for_json_is_recognised() {
        for (check, col) in [
            ("JSON_VALID(\"data\") OR \"data\" IS NULL", Some("data")),
            ("(JSON_VALID(\"data\") OR \"data\" IS NULL)", Some("data")),
            ("json_valid(doc)", Some("doc")),
            ("json_valid(doc) OR other IS NULL", None),
            ("json_valid(doc) AND length(doc) < 10", None),
            ("length(doc) < 10", None),
        ] {
            assert_eq!(json_valid_column(check).as_deref(), col, "{check}");
        }
    }
}
