//! SQLite declared types: the parser, SQLite's affinity rules, and the Postgres type each becomes.

use crate::model::PgType;

/// SQLite's column affinity (https://sqlite.org/datatype3.html, section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// INTEGER affinity.
    Integer,
    /// TEXT affinity.
    Text,
    /// BLOB affinity (also: no declared type).
    Blob,
    /// REAL affinity.
    Real,
    /// NUMERIC affinity.
    Numeric,
}

/// A declared type split into its name (upper-cased, single-spaced) and numeric arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclType {
    /// The type name words, e.g. `UNSIGNED BIG INT`.
    pub name: String,
    /// Arguments in parentheses that parse as integers, e.g. `[12, 2]`.
    pub args: Vec<u32>,
    /// Whether there were parentheses whose contents did not all parse.
    pub bad_args: bool,
}

/// Parses a declared type the way a person reads it; never fails.
pub fn parse_decltype(decl: &str) -> DeclType {
    let (head, args_text) = match decl.find('(') {
        Some(open) => {
            let rest = &decl[open + 1..];
            let close = rest.find(')').unwrap_or(rest.len());
            (&decl[..open], Some(&rest[..close]))
        }
        None => (decl, None),
    };
    let name = head
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(" ");
    let mut args = Vec::new();
    let mut bad_args = false;
    if let Some(text) = args_text {
        for a in text.split(',') {
            match a.trim().trim_start_matches('+').parse::<u32>() {
                Ok(n) => args.push(n),
                Err(_) => bad_args = true,
            }
        }
    }
    DeclType {
        name,
        args,
        bad_args,
    }
}

/// SQLite's affinity for a declared type, by the five rules in their order.
pub fn affinity(decl: &str) -> Affinity {
    let up = decl.to_ascii_uppercase();
    if up.contains("INT") {
        Affinity::Integer
    } else if up.contains("CHAR") || up.contains("CLOB") || up.contains("TEXT") {
        Affinity::Text
    } else if up.contains("BLOB") || up.trim().is_empty() {
        Affinity::Blob
    } else if up.contains("REAL") || up.contains("FLOA") || up.contains("DOUB") {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

/// The Postgres type a column of this declared type becomes when sqlite2pg creates the table.
pub fn map_decltype(decl: &str) -> PgType {
    let parsed = parse_decltype(decl);
    // SQLite's INTEGER is always 64-bit, whatever the declaration suggests: ids past 2^31
    // (Telegram user ids are past 2^32) must fit. Only an explicit `--cast` chooses narrower.
    if matches!(parsed.name.as_str(), "INT" | "INTEGER" | "MEDIUMINT") {
        return PgType::Int8;
    }
    if let Some(t) = named_type(&parsed) {
        return t;
    }
    match affinity(decl) {
        // An unknown integer-ish name: SQLite stores 64-bit integers in it.
        Affinity::Integer => PgType::Int8,
        Affinity::Text => PgType::Text,
        // No declared type: values keep whatever class the app wrote; text holds them all
        // readably, and `check` reports every value that is not already text.
        Affinity::Blob if parsed.name.is_empty() => PgType::Text,
        Affinity::Blob => PgType::Bytea,
        Affinity::Real => PgType::Float8,
        Affinity::Numeric => PgType::Numeric { typmod: None },
    }
}

/// The types a `--cast` can name, as a message lists them (each parses with
/// [`parse_pg_type_name`]; a test holds this list to the `PgType` variants).
pub const CAST_TYPES: &[&str] = &[
    "boolean",
    "smallint",
    "integer",
    "bigint",
    "real",
    "double precision",
    "numeric(p,s)",
    "text",
    "varchar(n)",
    "bytea",
    "date",
    "time",
    "timestamp",
    "timestamptz",
    "json",
    "jsonb",
    "uuid",
    "interval",
];

/// A Postgres type named in a `--cast`, or `None` when sqlite2pg cannot write it.
pub fn parse_pg_type_name(spec: &str) -> Option<PgType> {
    let parsed = parse_decltype(spec);
    // Only by a cast: a column SQLite declares INTERVAL holds whatever its app wrote, not
    // SQLAlchemy's date-time counted from 1970.
    if parsed.name == "INTERVAL" && parsed.args.is_empty() && !parsed.bad_args {
        return Some(PgType::Interval);
    }
    named_type(&parsed)
}

fn named_type(d: &DeclType) -> Option<PgType> {
    let len = || d.args.first().copied().filter(|n| *n > 0 && !d.bad_args);
    // Rails' `datetime(6)`: the fractional digits Postgres keeps (0 to 6).
    let precision = || match (d.bad_args, d.args.as_slice()) {
        (false, [p]) if *p <= 6 => Some(*p as u8),
        _ => None,
    };
    let t = match d.name.as_str() {
        "BOOLEAN" | "BOOL" => PgType::Bool,
        "DATE" => PgType::Date,
        "DATETIME" | "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => PgType::Timestamp {
            precision: precision(),
        },
        "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" | "DATETIMETZ" => PgType::Timestamptz {
            precision: precision(),
        },
        "TIME" | "TIME WITHOUT TIME ZONE" => PgType::Time {
            precision: precision(),
        },
        "NUMERIC" | "DECIMAL" => PgType::Numeric {
            typmod: match (d.bad_args, d.args.as_slice()) {
                (false, [p]) if (1..=1000).contains(p) => Some((*p, 0)),
                (false, [p, s]) if (1..=1000).contains(p) && s <= p => Some((*p, *s)),
                _ => None,
            },
        },
        "VARCHAR" | "CHARACTER VARYING" | "VARYING CHARACTER" | "NVARCHAR" | "NATIVE CHARACTER"
        | "VARCHAR2" | "NVARCHAR2" => PgType::Varchar { len: len() },
        // character(n) would blank-pad values that SQLite stores unpadded: varchar keeps them.
        "CHAR" | "CHARACTER" | "NCHAR" => PgType::Varchar { len: len() },
        "TEXT" | "CLOB" | "STRING" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" => PgType::Text,
        "JSON" => PgType::Json,
        "JSONB" => PgType::Jsonb,
        "BLOB" | "BYTEA" | "BINARY" | "VARBINARY" | "LONGBLOB" => PgType::Bytea,
        "INT" | "INTEGER" | "MEDIUMINT" | "INT4" => PgType::Int4,
        "BIGINT" | "INT8" | "UNSIGNED BIG INT" | "INT64" | "UNSIGNED INTEGER" => PgType::Int8,
        "SMALLINT" | "INT2" | "TINYINT" => PgType::Int2,
        // SQLite stores every REAL as 8 bytes: a 4-byte target would lose digits.
        "REAL" | "DOUBLE" | "DOUBLE PRECISION" | "FLOAT" | "FLOAT8" | "FLOAT4" => PgType::Float8,
        "UUID" => PgType::Uuid,
        _ => return None,
    };
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a `--cast` can name this type. Exhaustive on purpose: a new `PgType` variant
    /// does not compile here until someone decides, and then `every_castable_type_is_listed`
    /// holds `CAST_TYPES` to it.
    fn castable(t: &PgType) -> bool {
        match t {
            PgType::Bool
            | PgType::Int2
            | PgType::Int4
            | PgType::Int8
            | PgType::Float8
            | PgType::Numeric { .. }
            | PgType::Text
            | PgType::Varchar { .. }
            | PgType::Bytea
            | PgType::Date
            | PgType::Time { .. }
            | PgType::Timestamp { .. }
            | PgType::Timestamptz { .. }
            | PgType::Json
            | PgType::Jsonb
            | PgType::Uuid
            | PgType::Interval => true,
            // real is written as double precision (SQLite's REAL has 8 bytes); character(n)
            // would pad; an enum or a type sqlite2pg does not write comes from the target.
            PgType::Float4
            | PgType::Bpchar { .. }
            | PgType::Enum { .. }
            | PgType::Unsupported { .. } => false,
        }
    }

    #[test]
    fn every_castable_type_is_listed() {
        let listed: Vec<PgType> = CAST_TYPES
            .iter()
            .map(|n| {
                let n = n.replace("(p,s)", "(10,2)").replace("(n)", "(20)");
                parse_pg_type_name(&n)
                    .unwrap_or_else(|| panic!("CAST_TYPES lists {n}, which does not parse"))
            })
            .collect();
        let kinds = |ts: &[PgType]| -> Vec<std::mem::Discriminant<PgType>> {
            ts.iter().map(std::mem::discriminant).collect()
        };
        let listed = kinds(&listed);
        // One example of each variant, to ask `castable` about.
        let examples = [
            PgType::Bool,
            PgType::Int2,
            PgType::Int4,
            PgType::Int8,
            PgType::Float4,
            PgType::Float8,
            PgType::Numeric { typmod: None },
            PgType::Text,
            PgType::Varchar { len: None },
            PgType::Bpchar { len: None },
            PgType::Bytea,
            PgType::Date,
            PgType::Time { precision: None },
            PgType::Timestamp { precision: None },
            PgType::Timestamptz { precision: None },
            PgType::Json,
            PgType::Jsonb,
            PgType::Uuid,
            PgType::Interval,
        ];
        for t in examples.iter().filter(|t| castable(t)) {
            assert!(
                listed.contains(&std::mem::discriminant(t)),
                "{t:?} can be named in a --cast but CAST_TYPES does not list it"
            );
        }
    }

    #[test]
    fn maps_common_declarations() {
        let cases = [
            ("INTEGER", PgType::Int8),
            ("int", PgType::Int8),
            ("MEDIUMINT", PgType::Int8),
            ("INT4", PgType::Int4),
            ("BIGINT", PgType::Int8),
            ("unsigned big int", PgType::Int8),
            ("BOOLEAN", PgType::Bool),
            ("DATETIME", PgType::Timestamp { precision: None }),
            // Rails' datetime(6); a precision Postgres has not is no precision.
            ("datetime(6)", PgType::Timestamp { precision: Some(6) }),
            ("TIMESTAMP(0)", PgType::Timestamp { precision: Some(0) }),
            ("DATETIME(9)", PgType::Timestamp { precision: None }),
            ("time(3)", PgType::Time { precision: Some(3) }),
            ("DATE", PgType::Date),
            (
                "NUMERIC(12,2)",
                PgType::Numeric {
                    typmod: Some((12, 2)),
                },
            ),
            (
                "decimal(10, 0)",
                PgType::Numeric {
                    typmod: Some((10, 0)),
                },
            ),
            ("DECIMAL", PgType::Numeric { typmod: None }),
            ("VARCHAR(64)", PgType::Varchar { len: Some(64) }),
            ("character varying(5)", PgType::Varchar { len: Some(5) }),
            ("CHAR(32)", PgType::Varchar { len: Some(32) }),
            ("JSON", PgType::Json),
            ("BLOB", PgType::Bytea),
            ("", PgType::Text),
            ("REAL", PgType::Float8),
            ("FLOAT", PgType::Float8),
            ("TEXT", PgType::Text),
            ("CHARINT", PgType::Int8),
            ("MONEY", PgType::Numeric { typmod: None }),
            ("FLOATING POINT", PgType::Int8),
            ("NUMERIC(2,5)", PgType::Numeric { typmod: None }),
        ];
        for (decl, want) in cases {
            assert_eq!(map_decltype(decl), want, "declared type {decl:?}");
        }
    }

    #[test]
    fn a_cast_to_integer_stays_32_bit() {
        assert_eq!(parse_pg_type_name("integer"), Some(PgType::Int4));
        assert_eq!(parse_pg_type_name("bigint"), Some(PgType::Int8));
    }

    #[test]
    fn affinity_follows_sqlite_rule_order() {
        assert_eq!(affinity("CHARINT"), Affinity::Integer);
        assert_eq!(affinity("FLOATING POINT"), Affinity::Integer);
        assert_eq!(affinity("STRING"), Affinity::Numeric);
        assert_eq!(affinity("BLOB"), Affinity::Blob);
        assert_eq!(affinity(""), Affinity::Blob);
        assert_eq!(affinity("DOUBLE"), Affinity::Real);
    }
}
