//! Types shared by the source and target sides: values, the source schema, and target types.

use serde::{Deserialize, Serialize};

/// A SQLite value borrowed from a row, with its true storage class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SqlValue<'a> {
    /// NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// An IEEE double.
    Real(f64),
    /// Text as SQLite stores it; not guaranteed to be valid UTF-8.
    Text(&'a [u8]),
    /// A BLOB.
    Blob(&'a [u8]),
}

impl SqlValue<'_> {
    /// SQLite's name for the storage class, for messages.
    pub fn storage_class(&self) -> &'static str {
        match self {
            SqlValue::Null => "NULL",
            SqlValue::Integer(_) => "INTEGER",
            SqlValue::Real(_) => "REAL",
            SqlValue::Text(_) => "TEXT",
            SqlValue::Blob(_) => "BLOB",
        }
    }

    /// An owned copy.
    pub fn to_owned_value(&self) -> OwnedValue {
        match *self {
            SqlValue::Null => OwnedValue::Null,
            SqlValue::Integer(i) => OwnedValue::Integer(i),
            SqlValue::Real(f) => OwnedValue::Real(f),
            SqlValue::Text(t) => OwnedValue::Text(t.to_vec()),
            SqlValue::Blob(b) => OwnedValue::Blob(b.to_vec()),
        }
    }

    /// A short, printable rendering for reports (long values are cut, bytes shown escaped).
    pub fn display(&self) -> String {
        const MAX: usize = 60;
        match *self {
            SqlValue::Null => "NULL".into(),
            SqlValue::Integer(i) => i.to_string(),
            SqlValue::Real(f) => format!("{f:?}"),
            SqlValue::Text(t) => {
                let cut = &t[..t.len().min(MAX)];
                let mut s = String::from("'");
                for chunk in cut.utf8_chunks() {
                    for c in chunk.valid().chars() {
                        match c {
                            '\0' => s.push_str("\\0"),
                            '\'' => s.push_str("''"),
                            c if c.is_control() => s.push_str(&c.escape_default().to_string()),
                            c => s.push(c),
                        }
                    }
                    for b in chunk.invalid() {
                        s.push_str(&format!("\\x{b:02x}"));
                    }
                }
                s.push('\'');
                if t.len() > MAX {
                    s.push_str(&format!("... ({} bytes)", t.len()));
                }
                s
            }
            SqlValue::Blob(b) => {
                let hex: String = b.iter().take(MAX / 2).map(|x| format!("{x:02x}")).collect();
                if b.len() > MAX / 2 {
                    format!("x'{hex}'... ({} bytes)", b.len())
                } else {
                    format!("x'{hex}'")
                }
            }
        }
    }
}

/// An owned SQLite value: snapshot positions and reported keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OwnedValue {
    /// NULL.
    Null,
    /// INTEGER.
    Integer(i64),
    /// REAL.
    Real(f64),
    /// TEXT bytes.
    Text(Vec<u8>),
    /// BLOB.
    Blob(Vec<u8>),
}

impl OwnedValue {
    /// A borrowed view.
    pub fn as_ref(&self) -> SqlValue<'_> {
        match self {
            OwnedValue::Null => SqlValue::Null,
            OwnedValue::Integer(i) => SqlValue::Integer(*i),
            OwnedValue::Real(f) => SqlValue::Real(*f),
            OwnedValue::Text(t) => SqlValue::Text(t),
            OwnedValue::Blob(b) => SqlValue::Blob(b),
        }
    }
}

impl rusqlite::ToSql for OwnedValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            OwnedValue::Null => ValueRef::Null,
            OwnedValue::Integer(i) => ValueRef::Integer(*i),
            OwnedValue::Real(f) => ValueRef::Real(*f),
            OwnedValue::Text(t) => ValueRef::Text(t),
            OwnedValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// Renders a key (one value per key column) for messages: `id=42` or `(a=1, b='x')`.
pub fn display_key(names: &[String], key: &[OwnedValue]) -> String {
    let parts: Vec<String> = names
        .iter()
        .zip(key)
        .map(|(n, v)| format!("{n}={}", v.as_ref().display()))
        .collect();
    if parts.len() == 1 {
        parts.into_iter().next().unwrap_or_default()
    } else {
        format!("({})", parts.join(", "))
    }
}

/// What kind of object a table in `sqlite_master` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    /// An ordinary table.
    Plain,
    /// A virtual table (FTS5, R*Tree, ...).
    Virtual,
    /// A shadow table that stores a virtual table's data.
    Shadow,
}

/// A column as SQLite declares it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceColumn {
    /// The column name.
    pub name: String,
    /// The declared type, as written (may be empty).
    pub decl_type: String,
    /// NOT NULL constraint.
    pub not_null: bool,
    /// The DEFAULT clause as SQL text, if any.
    pub default: Option<String>,
    /// Generated (computed) column.
    pub generated: bool,
}

/// A foreign key as SQLite declares it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceForeignKey {
    /// SQLite's id of the key (as `PRAGMA foreign_key_list` and `foreign_key_check` number it).
    pub id: i64,
    /// Columns of the child table.
    pub columns: Vec<String>,
    /// The parent table.
    pub parent: String,
    /// Parent columns; empty means the parent's primary key.
    pub parent_columns: Vec<String>,
    /// ON DELETE action (`NO ACTION`, `CASCADE`, ...).
    pub on_delete: String,
    /// ON UPDATE action.
    pub on_update: String,
}

/// An index (explicit, or implied by UNIQUE) as SQLite declares it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceIndex {
    /// The index name.
    pub name: String,
    /// UNIQUE index.
    pub unique: bool,
    /// `c` created by CREATE INDEX, `u` by a UNIQUE constraint, `pk` by the PRIMARY KEY.
    pub origin: String,
    /// Key columns; `None` for an expression term.
    pub columns: Vec<Option<String>>,
    /// Descending flags per key column.
    pub descending: Vec<bool>,
    /// The collation each key column compares under (`BINARY`, `NOCASE`, `RTRIM`).
    pub collations: Vec<String>,
    /// The WHERE clause of a partial index, as SQL text.
    pub where_clause: Option<String>,
    /// The CREATE INDEX statement, when there is one.
    pub sql: Option<String>,
}

/// A table as SQLite declares it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceTable {
    /// The table name.
    pub name: String,
    /// Plain, virtual or shadow.
    pub kind: TableKind,
    /// Columns in declaration order.
    pub columns: Vec<SourceColumn>,
    /// Indexes into `columns`, in primary-key order; empty when there is no PRIMARY KEY.
    pub primary_key: Vec<usize>,
    /// The INTEGER PRIMARY KEY column that aliases the rowid, if any.
    pub rowid_alias: Option<usize>,
    /// Declared with AUTOINCREMENT.
    pub autoincrement: bool,
    /// A WITHOUT ROWID table.
    pub without_rowid: bool,
    /// Indexes, unique constraints included (not the primary key's).
    pub indexes: Vec<SourceIndex>,
    /// The collation each primary-key column compares under, in key order (`BINARY` for an
    /// INTEGER PRIMARY KEY); empty without a primary key.
    pub key_collations: Vec<String>,
    /// Foreign keys.
    pub foreign_keys: Vec<SourceForeignKey>,
    /// The CREATE statement.
    pub sql: String,
    /// The declared primary key holds NULLs (SQLite allows that for non-INTEGER keys of rowid
    /// tables), so it identifies no row.
    pub null_in_primary_key: bool,
}

/// Key columns the changelog has from the start (`k1..k4`); a wider key adds more.
pub const BASE_KEY_COLUMNS: usize = 4;

impl SourceTable {
    /// How its changes are followed: by key, or by whole-row images for rowid tables without
    /// a usable primary key (none, or NULLs in it). Rowids cannot serve as a key: `VACUUM` may
    /// renumber them.
    pub fn follow(&self) -> Follow {
        if let Some(alias) = self.rowid_alias {
            return Follow::ByKey(vec![alias]);
        }
        if !self.without_rowid && (self.primary_key.is_empty() || self.null_in_primary_key) {
            return Follow::ByImage;
        }
        Follow::ByKey(self.primary_key.clone())
    }

    /// The columns a snapshot orders and resumes by: the key, or the bare rowid for tables
    /// followed by row images.
    pub fn scan_key(&self) -> ScanKey {
        match self.follow() {
            Follow::ByKey(columns) => ScanKey::Columns(columns),
            Follow::ByImage => ScanKey::Rowid,
        }
    }

    /// A name that reaches the rowid in SQL: `rowid`, unless a column took that name.
    pub fn rowid_name(&self) -> &'static str {
        ["rowid", "_rowid_", "oid"]
            .into_iter()
            .find(|n| !self.columns.iter().any(|c| c.name.eq_ignore_ascii_case(n)))
            .unwrap_or("rowid")
    }
}

/// How a source value is read before it is converted to the target type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceEncoding {
    /// Integers or reals are seconds since 1970-01-01 UTC.
    EpochS,
    /// Integers or reals are milliseconds since 1970-01-01 UTC.
    EpochMs,
    /// Integers or reals are microseconds since 1970-01-01 UTC.
    EpochUs,
    /// Reals are julian day numbers, as SQLite's julianday() returns.
    Julian,
}

impl SourceEncoding {
    /// The name a `--cast` gives it.
    pub fn name(self) -> &'static str {
        match self {
            SourceEncoding::EpochS => "epoch_s",
            SourceEncoding::EpochMs => "epoch_ms",
            SourceEncoding::EpochUs => "epoch_us",
            SourceEncoding::Julian => "julian",
        }
    }
}

/// How a table's changes are followed, from the changelog to the other database and back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// By key (column indexes: the rowid alias or the primary key): the changelog names keys,
    /// and the rows are read again by them.
    ByKey(Vec<usize>),
    /// By whole-row images: the changelog holds the rows themselves, and a table's rows are
    /// told apart only by their values.
    ByImage,
}

/// How a table's rows are ordered for chunked reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanKey {
    /// The implicit rowid (tables without a primary key).
    Rowid,
    /// These columns (by index), in this order.
    Columns(Vec<usize>),
}

/// A Postgres column type sqlite2pg can write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PgType {
    /// boolean
    Bool,
    /// smallint
    Int2,
    /// integer
    Int4,
    /// bigint
    Int8,
    /// real
    Float4,
    /// double precision
    Float8,
    /// numeric, optionally with (precision, scale)
    Numeric {
        /// Precision and scale, when constrained.
        typmod: Option<(u32, u32)>,
    },
    /// text
    Text,
    /// varchar(n)
    Varchar {
        /// Maximum length in characters.
        len: Option<u32>,
    },
    /// character(n), blank-padded
    Bpchar {
        /// Length in characters.
        len: Option<u32>,
    },
    /// bytea
    Bytea,
    /// date
    Date,
    /// time without time zone, optionally with fractional digits (0-6)
    Time {
        /// Fractional digits of seconds kept, when constrained.
        precision: Option<u8>,
    },
    /// timestamp without time zone, optionally with fractional digits (0-6)
    Timestamp {
        /// Fractional digits of seconds kept, when constrained.
        precision: Option<u8>,
    },
    /// timestamp with time zone, optionally with fractional digits (0-6)
    Timestamptz {
        /// Fractional digits of seconds kept, when constrained.
        precision: Option<u8>,
    },
    /// json (text kept exactly)
    Json,
    /// jsonb
    Jsonb,
    /// uuid
    Uuid,
    /// interval, without months (SQLAlchemy's `Interval` keeps a `DATETIME` counted from
    /// 1970-01-01 in SQLite, as a Python `timedelta` has no months)
    Interval,
    /// A user-defined enum type.
    Enum {
        /// Quoted, schema-qualified type name.
        name: String,
        /// Allowed labels.
        labels: Vec<String>,
    },
    /// A type sqlite2pg cannot write; the name says which.
    Unsupported {
        /// The type as Postgres formats it.
        name: String,
    },
}

fn with_precision(name: &str, precision: Option<u8>) -> String {
    match precision {
        Some(p) => format!("{name}({p})"),
        None => name.into(),
    }
}

impl PgType {
    /// The fractional digits of seconds a time or timestamp column keeps, when fewer than
    /// Postgres' six.
    pub fn fraction_digits(&self) -> Option<u8> {
        match self {
            PgType::Time { precision }
            | PgType::Timestamp { precision }
            | PgType::Timestamptz { precision } => precision.filter(|p| *p < 6),
            _ => None,
        }
    }

    /// The type as written in DDL.
    pub fn sql(&self) -> String {
        match self {
            PgType::Bool => "boolean".into(),
            PgType::Int2 => "smallint".into(),
            PgType::Int4 => "integer".into(),
            PgType::Int8 => "bigint".into(),
            PgType::Float4 => "real".into(),
            PgType::Float8 => "double precision".into(),
            PgType::Numeric {
                typmod: Some((p, s)),
            } => format!("numeric({p},{s})"),
            PgType::Numeric { typmod: None } => "numeric".into(),
            PgType::Text => "text".into(),
            PgType::Varchar { len: Some(n) } => format!("varchar({n})"),
            PgType::Varchar { len: None } => "varchar".into(),
            PgType::Bpchar { len: Some(n) } => format!("character({n})"),
            PgType::Bpchar { len: None } => "character".into(),
            PgType::Bytea => "bytea".into(),
            PgType::Date => "date".into(),
            PgType::Time { precision } => with_precision("time", *precision),
            PgType::Timestamp { precision } => with_precision("timestamp", *precision),
            PgType::Timestamptz { precision } => with_precision("timestamptz", *precision),
            PgType::Json => "json".into(),
            PgType::Jsonb => "jsonb".into(),
            PgType::Uuid => "uuid".into(),
            PgType::Interval => "interval".into(),
            PgType::Enum { name, .. } => name.clone(),
            PgType::Unsupported { name } => name.clone(),
        }
    }

    /// Integer types, whose identity/sequence can be moved past copied ids.
    pub fn is_integer(&self) -> bool {
        matches!(self, PgType::Int2 | PgType::Int4 | PgType::Int8)
    }
}

/// Postgres keeps the first 63 bytes of an identifier (cut at a character boundary), so a
/// longer name still works in the app's queries as long as no two names share those bytes.
pub fn truncate_ident(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let mut end = 63;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// Quotes an identifier for SQLite and Postgres alike: `"` doubled inside double quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How a column's text values compare in SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Collation {
    /// Byte by byte.
    Binary,
    /// ASCII letters folded to lower case.
    Nocase,
    /// Trailing spaces ignored.
    Rtrim,
}

impl Collation {
    /// The collation SQLite names `name`, if it is one of its own.
    pub fn named(name: &str) -> Option<Collation> {
        match name.trim_matches('"').to_ascii_uppercase().as_str() {
            "BINARY" => Some(Collation::Binary),
            "NOCASE" => Some(Collation::Nocase),
            "RTRIM" => Some(Collation::Rtrim),
            _ => None,
        }
    }

    /// `sql` as this collation compares it, in Postgres (compared with `COLLATE "C"`).
    pub fn key(self, sql: &str) -> String {
        match self {
            Collation::Binary => sql.to_string(),
            Collation::Nocase => format!(
                "translate({sql}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"
            ),
            Collation::Rtrim => format!("rtrim({sql}, ' ')"),
        }
    }
}
