//! Reads tables that already exist in the target schema (made by the app's migrations).

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::quote_ident;
use crate::error::{Error, Result};
use crate::model::PgType;

/// A column of an existing target table.
#[derive(Debug, Clone)]
pub struct TargetColumn {
    /// The column name.
    pub name: String,
    /// Its type, as sqlite2pg writes it.
    pub ty: PgType,
    /// NOT NULL.
    pub not_null: bool,
    /// Has a default (or is an identity/serial column).
    pub has_default: bool,
    /// A generated column (cannot be written).
    pub generated: bool,
}

/// An existing target table.
#[derive(Debug, Clone)]
pub struct TargetTable {
    /// The table name.
    pub name: String,
    /// Columns in order.
    pub columns: Vec<TargetColumn>,
    /// Column sets of the primary key and of every unique index (primary key first).
    pub unique_keys: Vec<Vec<String>>,
    /// Whether the first entry of `unique_keys` is the primary key.
    pub has_primary_key: bool,
}

/// Every ordinary table in `schema`, by name.
pub async fn read_tables(client: &Client, schema: &str) -> Result<BTreeMap<String, TargetTable>> {
    let rows = client
        .query(
            "SELECT c.relname, a.attname, a.attnotnull, a.atthasdef OR a.attidentity <> '', a.attgenerated <> '',
                    t.typname, t.typtype::text, format_type(a.atttypid, a.atttypmod), a.atttypmod, tn.nspname,
                    CASE WHEN t.typtype = 'e' THEN
                      (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid)
                    END
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             JOIN pg_type t ON t.oid = a.atttypid
             JOIN pg_namespace tn ON tn.oid = t.typnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
             ORDER BY c.relname, a.attnum",
            &[&schema],
        )
        .await
        .map_err(|e| Error::from_pg(format!("cannot read the tables of target schema {schema}"), e))?;
    let mut tables: BTreeMap<String, TargetTable> = BTreeMap::new();
    for r in rows {
        let table: String = r.get(0);
        let typname: String = r.get(5);
        let typtype: String = r.get(6);
        let formatted: String = r.get(7);
        let typmod: i32 = r.get(8);
        let typschema: String = r.get(9);
        let labels: Option<Vec<String>> = r.get(10);
        let ty = if typtype == "e" {
            PgType::Enum {
                name: format!("{}.{}", quote_ident(&typschema), quote_ident(&typname)),
                labels: labels.unwrap_or_default(),
            }
        } else {
            pg_type_from_catalog(&typname, typmod, &formatted)
        };
        let entry = tables.entry(table.clone()).or_insert_with(|| TargetTable {
            name: table,
            columns: Vec::new(),
            unique_keys: Vec::new(),
            has_primary_key: false,
        });
        entry.columns.push(TargetColumn {
            name: r.get(1),
            ty,
            not_null: r.get(2),
            has_default: r.get(3),
            generated: r.get(4),
        });
    }
    let keys = client
        .query(
            "SELECT c.relname, i.indisprimary, array_agg(a.attname::text ORDER BY k.ord)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             WHERE n.nspname = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
               AND k.ord <= i.indnkeyatts
             GROUP BY c.relname, i.indexrelid, i.indisprimary
             ORDER BY c.relname, i.indisprimary DESC, i.indexrelid",
            &[&schema],
        )
        .await
        .map_err(|e| {
            Error::from_pg(format!("cannot read the keys of target schema {schema}"), e)
        })?;
    for r in keys {
        let table: String = r.get(0);
        if let Some(t) = tables.get_mut(&table) {
            let primary: bool = r.get(1);
            if primary {
                t.has_primary_key = true;
            }
            t.unique_keys.push(r.get(2));
        }
    }
    Ok(tables)
}

fn pg_type_from_catalog(typname: &str, typmod: i32, formatted: &str) -> PgType {
    // time(p), timestamp(p): the typmod is p itself (-1 when unconstrained).
    let precision = || u8::try_from(typmod).ok().filter(|p| *p <= 6);
    match typname {
        "bool" => PgType::Bool,
        "int2" => PgType::Int2,
        "int4" => PgType::Int4,
        "int8" => PgType::Int8,
        "float4" => PgType::Float4,
        "float8" => PgType::Float8,
        "numeric" => PgType::Numeric {
            typmod: (typmod >= 4).then(|| {
                let m = (typmod - 4) as u32;
                ((m >> 16) & 0xffff, m & 0xffff)
            }),
        },
        "text" | "citext" => PgType::Text,
        "varchar" => PgType::Varchar {
            len: (typmod >= 4).then(|| (typmod - 4) as u32),
        },
        "bpchar" => PgType::Bpchar {
            len: (typmod >= 4).then(|| (typmod - 4) as u32),
        },
        "bytea" => PgType::Bytea,
        "date" => PgType::Date,
        "time" => PgType::Time {
            precision: precision(),
        },
        "timestamp" => PgType::Timestamp {
            precision: precision(),
        },
        "timestamptz" => PgType::Timestamptz {
            precision: precision(),
        },
        "json" => PgType::Json,
        "jsonb" => PgType::Jsonb,
        "uuid" => PgType::Uuid,
        // `interval second(3)` and the like would round or drop fields: not written.
        "interval" if typmod < 0 => PgType::Interval,
        _ => PgType::Unsupported {
            name: formatted.to_string(),
        },
    }
}

/// What the schema in Postgres already does for the app beyond holding values: read for the
/// tables the app's migrations made, where sqlite2pg adds nothing and `check` says what the
/// migration lacks of what SQLite does.
#[derive(Debug, Clone, Default)]
pub struct Behaviours {
    /// CHECK constraints: (table, name, definition, columns).
    pub checks: Vec<(String, String, String, Vec<String>)>,
    /// Unique indexes and constraints: (table, name, definition).
    pub unique_indexes: Vec<(String, String, String)>,
    /// Columns that compare without case: `citext`, or a nondeterministic collation.
    pub folded_columns: Vec<(String, String)>,
    /// Views.
    pub views: Vec<String>,
    /// Triggers other than Postgres' own: (table, name).
    pub triggers: Vec<(String, String)>,
}

/// Reads [`Behaviours`] of the target schema.
pub async fn behaviours(client: &Client, schema: &str) -> Result<Behaviours> {
    let err = |e| {
        Error::from_pg(
            "cannot read the target schema's constraints, views and triggers",
            e,
        )
    };
    let mut out = Behaviours::default();
    for r in client
        .query(
            "SELECT c.relname::text, con.conname::text, pg_get_constraintdef(con.oid),
                    ARRAY(SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey))
             FROM pg_constraint con
             JOIN pg_class c ON c.oid = con.conrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND con.contype = 'c'",
            &[&schema],
        )
        .await
        .map_err(err)?
    {
        out.checks.push((r.get(0), r.get(1), r.get(2), r.get(3)));
    }
    for r in client
        .query(
            "SELECT c.relname::text, i.relname::text, pg_get_indexdef(x.indexrelid)
             FROM pg_index x
             JOIN pg_class c ON c.oid = x.indrelid
             JOIN pg_class i ON i.oid = x.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND x.indisunique",
            &[&schema],
        )
        .await
        .map_err(err)?
    {
        out.unique_indexes.push((r.get(0), r.get(1), r.get(2)));
    }
    for r in client
        .query(
            "SELECT c.relname::text, a.attname::text
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_collation co ON co.oid = a.attcollation
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0
               AND NOT a.attisdropped
               AND (t.typname = 'citext' OR co.collisdeterministic = false)",
            &[&schema],
        )
        .await
        .map_err(err)?
    {
        out.folded_columns.push((r.get(0), r.get(1)));
    }
    for r in client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('v', 'm')",
            &[&schema],
        )
        .await
        .map_err(err)?
    {
        out.views.push(r.get(0));
    }
    for r in client
        .query(
            "SELECT c.relname::text, t.tgname::text FROM pg_trigger t
             JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND NOT t.tgisinternal",
            &[&schema],
        )
        .await
        .map_err(err)?
    {
        out.triggers.push((r.get(0), r.get(1)));
    }
    Ok(out)
}
