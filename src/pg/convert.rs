//! Value conversion: one SQLite value into one Postgres binary field, or the reason it cannot be.
//! `check`, the snapshot and verify all go through `encode`, so they agree on every value.

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use crate::datetime::{self, MICROS_PER_DAY, UNIX_TO_PG_DAYS};
use crate::model::SourceEncoding;
use crate::model::{PgType, SqlValue};

/// How one column's values are converted.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnConv {
    /// The target column's type.
    pub ty: PgType,
    /// How numbers in a date/time column are read, when the user said so.
    pub encoding: Option<SourceEncoding>,
}

/// The kind of a value that cannot be moved as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The storage class does not fit the column (text in an integer column, ...).
    TypeMismatch,
    /// Text with a NUL byte, which Postgres text cannot hold.
    NulByte,
    /// Text that is not valid UTF-8.
    InvalidUtf8,
    /// A number outside the target type's range.
    OutOfRange,
    /// REAL Infinity where the target cannot hold it.
    NonFinite,
    /// A date or time Postgres rejects.
    BadDate,
    /// A number in a date/time column (epoch seconds/milliseconds or a julian day).
    NumericDate,
    /// Longer than the column's declared length.
    TooLong,
    /// More digits than the column keeps: the value would be rounded.
    Precision,
    /// Not valid JSON, or JSON jsonb cannot hold.
    BadJson,
    /// Not one of the enum type's labels.
    NotEnumLabel,
    /// Not a UUID.
    BadUuid,
    /// A target type sqlite2pg cannot write.
    UnsupportedType,
}

/// Why a value cannot be converted, in words for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvError {
    /// The kind, for grouping.
    pub kind: ProblemKind,
    /// What is wrong with this value.
    pub detail: String,
}

fn err<T>(kind: ProblemKind, detail: impl Into<String>) -> Result<T, ConvError> {
    Err(ConvError {
        kind,
        detail: detail.into(),
    })
}

/// Appends one binary COPY field (length, then bytes) for `value` converted to `conv`.
/// On error `out` is left as it was.
pub fn encode(value: SqlValue<'_>, conv: &ColumnConv, out: &mut BytesMut) -> Result<(), ConvError> {
    if let SqlValue::Null = value {
        out.put_i32(-1);
        return Ok(());
    }
    let len_at = out.len();
    out.put_i32(0);
    match encode_payload(value, conv, out) {
        Ok(()) => {
            let len = (out.len() - len_at - 4) as i32;
            out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(len_at);
            Err(e)
        }
    }
}

fn text_of<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, ConvError> {
    let s = std::str::from_utf8(bytes).map_err(|e| ConvError {
        kind: ProblemKind::InvalidUtf8,
        detail: format!(
            "{what} is not valid UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        ),
    })?;
    if let Some(pos) = s.find('\0') {
        return err(
            ProblemKind::NulByte,
            format!("{what} contains a NUL byte at offset {pos}; Postgres text cannot hold it"),
        );
    }
    Ok(s)
}

fn mismatch<T>(value: SqlValue<'_>, ty: &PgType) -> Result<T, ConvError> {
    err(
        ProblemKind::TypeMismatch,
        format!(
            "a {} value cannot be stored in a {} column",
            value.storage_class(),
            ty.sql()
        ),
    )
}

fn encode_payload(
    value: SqlValue<'_>,
    conv: &ColumnConv,
    out: &mut BytesMut,
) -> Result<(), ConvError> {
    let ty = &conv.ty;
    match ty {
        PgType::Bool => {
            let b = match value {
                SqlValue::Integer(0) => false,
                SqlValue::Integer(1) => true,
                SqlValue::Real(0.0) => false,
                SqlValue::Real(1.0) => true,
                SqlValue::Text(t) => match text_of(t, "text")?.to_ascii_lowercase().as_str() {
                    "t" | "true" | "y" | "yes" | "on" | "1" => true,
                    "f" | "false" | "n" | "no" | "off" | "0" => false,
                    _ => {
                        return err(
                            ProblemKind::TypeMismatch,
                            "text that is not a boolean in a boolean column",
                        );
                    }
                },
                SqlValue::Integer(_) | SqlValue::Real(_) => {
                    return err(
                        ProblemKind::OutOfRange,
                        "only 0 and 1 are booleans; another number would become true",
                    );
                }
                _ => return mismatch(value, ty),
            };
            out.put_u8(u8::from(b));
        }
        PgType::Int2 | PgType::Int4 | PgType::Int8 => {
            let i = integer_of(value, ty)?;
            match ty {
                PgType::Int2 => out.put_i16(i16::try_from(i).or_else(|_| range_err(i, ty))?),
                PgType::Int4 => out.put_i32(i32::try_from(i).or_else(|_| range_err(i, ty))?),
                _ => out.put_i64(i),
            }
        }
        PgType::Float4 | PgType::Float8 => {
            let f = match value {
                SqlValue::Real(f) => f,
                SqlValue::Integer(i) => {
                    let f = i as f64;
                    if f as i128 != i128::from(i) {
                        return err(
                            ProblemKind::Precision,
                            format!("{i} has more digits than a double keeps"),
                        );
                    }
                    f
                }
                SqlValue::Text(t) => parse_float_text(text_of(t, "text")?)?,
                _ => return mismatch(value, ty),
            };
            if let PgType::Float4 = ty {
                let g = f as f32;
                if f64::from(g) != f && f.is_finite() {
                    return err(
                        ProblemKind::Precision,
                        format!("{f:?} does not fit a 4-byte real exactly"),
                    );
                }
                out.put_f32(g);
            } else {
                out.put_f64(f);
            }
        }
        PgType::Numeric { typmod } => {
            let text = match value {
                SqlValue::Integer(i) => i.to_string(),
                SqlValue::Real(f) if f.is_finite() => format!("{f}"),
                SqlValue::Real(_) => {
                    return err(
                        ProblemKind::NonFinite,
                        "Infinity cannot be stored in a numeric column",
                    );
                }
                SqlValue::Text(t) => text_of(t, "text")?.to_string(),
                _ => return mismatch(value, ty),
            };
            let dec = Decimal::parse(&text).ok_or_else(|| ConvError {
                kind: ProblemKind::TypeMismatch,
                detail: "text that is not a number in a numeric column".into(),
            })?;
            if let Some((p, s)) = typmod {
                dec.check_typmod(*p, *s)?;
            }
            dec.write_binary(out);
        }
        PgType::Text | PgType::Varchar { .. } | PgType::Bpchar { .. } | PgType::Enum { .. } => {
            let owned;
            let s: &str = match value {
                SqlValue::Text(t) => text_of(t, "text")?,
                SqlValue::Integer(i) => {
                    owned = i.to_string();
                    &owned
                }
                SqlValue::Real(f) => {
                    owned = format!("{f:?}");
                    &owned
                }
                SqlValue::Blob(b) => {
                    text_of(b, "BLOB")?;
                    return err(
                        ProblemKind::TypeMismatch,
                        "a BLOB in a text column; cast the column to bytea, or store it as text in SQLite",
                    );
                }
                SqlValue::Null => return mismatch(value, ty),
            };
            match ty {
                PgType::Varchar { len: Some(n) } | PgType::Bpchar { len: Some(n) } => {
                    let chars = s.chars().count();
                    if chars > *n as usize {
                        return err(
                            ProblemKind::TooLong,
                            format!(
                                "{chars} characters do not fit {} (SQLite does not enforce the length)",
                                ty.sql()
                            ),
                        );
                    }
                }
                PgType::Enum { labels, name } if !labels.iter().any(|l| l == s) => {
                    return err(
                        ProblemKind::NotEnumLabel,
                        format!("not a label of enum {name} (labels: {})", labels.join(", ")),
                    );
                }
                _ => {}
            }
            out.put_slice(s.as_bytes());
        }
        PgType::Bytea => match value {
            SqlValue::Blob(b) | SqlValue::Text(b) => out.put_slice(b),
            _ => return mismatch(value, ty),
        },
        PgType::Json | PgType::Jsonb => {
            let owned;
            let s: &str = match value {
                SqlValue::Text(t) => text_of(t, "JSON text")?,
                SqlValue::Integer(i) => {
                    owned = i.to_string();
                    &owned
                }
                SqlValue::Real(f) if f.is_finite() => {
                    owned = format!("{f:?}");
                    &owned
                }
                _ => return mismatch(value, ty),
            };
            let parsed: serde_json::Value = serde_json::from_str(s).map_err(|e| ConvError {
                kind: ProblemKind::BadJson,
                detail: format!("not valid JSON ({e})"),
            })?;
            if let PgType::Jsonb = ty {
                if json_has_nul(&parsed) {
                    return err(
                        ProblemKind::BadJson,
                        "JSON with \\u0000 in a string, which jsonb cannot hold",
                    );
                }
                out.put_u8(1);
            }
            out.put_slice(s.as_bytes());
        }
        PgType::Uuid => {
            let bytes = match value {
                SqlValue::Blob(b) if b.len() == 16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(b);
                    a
                }
                SqlValue::Text(t) => parse_uuid(text_of(t, "text")?).ok_or_else(|| ConvError {
                    kind: ProblemKind::BadUuid,
                    detail: "not a UUID".into(),
                })?,
                _ => return mismatch(value, ty),
            };
            out.put_slice(&bytes);
        }
        PgType::Date
        | PgType::Time { .. }
        | PgType::Timestamp { .. }
        | PgType::Timestamptz { .. } => {
            encode_datetime(value, conv, out)?;
        }
        PgType::Interval => {
            let (days, micros) = interval_of(value, conv)?;
            out.put_i64(micros);
            out.put_i32(days);
            out.put_i32(0);
        }
        PgType::Unsupported { name } => {
            return err(
                ProblemKind::UnsupportedType,
                format!(
                    "sqlite2pg cannot write the Postgres type {name}; change the target column's type"
                ),
            );
        }
    }
    Ok(())
}

fn range_err<T>(i: i64, ty: &PgType) -> Result<T, ConvError> {
    err(
        ProblemKind::OutOfRange,
        format!("{i} is out of range for {}", ty.sql()),
    )
}

fn integer_of(value: SqlValue<'_>, ty: &PgType) -> Result<i64, ConvError> {
    match value {
        SqlValue::Integer(i) => Ok(i),
        SqlValue::Real(f)
            if f.fract() == 0.0
                && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) =>
        {
            Ok(f as i64)
        }
        SqlValue::Real(f) if f.is_finite() && f.fract() == 0.0 => err(
            ProblemKind::OutOfRange,
            format!("{f:?} is out of range for {}", ty.sql()),
        ),
        SqlValue::Real(f) if f.is_finite() => err(
            ProblemKind::TypeMismatch,
            format!("REAL {f:?} in an integer column would lose its fraction"),
        ),
        SqlValue::Real(_) => err(
            ProblemKind::NonFinite,
            "Infinity cannot be stored in an integer column",
        ),
        SqlValue::Text(t) => {
            let s = text_of(t, "text")?;
            match s.parse::<i64>() {
                Ok(i) if !s.starts_with('+') => Ok(i),
                _ => err(
                    ProblemKind::TypeMismatch,
                    format!("text in {} column", with_article(&ty.sql())),
                ),
            }
        }
        _ => mismatch(value, ty),
    }
}

fn parse_float_text(s: &str) -> Result<f64, ConvError> {
    let looks_numeric = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'+');
    match s.parse::<f64>() {
        Ok(f) if looks_numeric && f.is_finite() => Ok(f),
        _ => err(
            ProblemKind::TypeMismatch,
            "text that is not a number in a floating-point column",
        ),
    }
}

fn json_has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(json_has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    let hex: Vec<u8> = match b.len() {
        32 => b.to_vec(),
        36 if [8, 13, 18, 23].iter().all(|&i| b[i] == b'-') => b
            .iter()
            .enumerate()
            .filter(|(i, _)| ![8, 13, 18, 23].contains(i))
            .map(|(_, c)| *c)
            .collect(),
        _ => return None,
    };
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A numeric's value without its display scale: (sign, weight, base-10000 digits).
pub fn numeric_value(b: &[u8]) -> Option<(u16, i16, Vec<u8>)> {
    let ndigits = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
    let weight = i16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    let sign = u16::from_be_bytes([*b.get(4)?, *b.get(5)?]);
    let mut digits = b.get(8..8 + 2 * ndigits)?.to_vec();
    while digits.len() >= 2 && digits[digits.len() - 2..] == [0, 0] {
        digits.truncate(digits.len() - 2);
    }
    Some(if digits.is_empty() {
        (0, 0, digits)
    } else {
        (sign, weight, digits)
    })
}

/// `a bigint`, `an integer`.
fn with_article(noun: &str) -> String {
    let vowel = noun.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {noun}", if vowel { "an" } else { "a" })
}

/// A binary value of a `ty` column in a form equal exactly when [`same`] says so: a numeric
/// without its display scale, an interval as its length, jsonb as its parsed JSON (text that
/// does not parse stays as it is); other types as they are.
pub fn comparable<'a>(ty: &PgType, b: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    use std::borrow::Cow;
    match ty {
        PgType::Numeric { .. } => match numeric_value(b) {
            Some((sign, weight, digits)) => {
                let mut out = sign.to_be_bytes().to_vec();
                out.extend_from_slice(&weight.to_be_bytes());
                out.extend_from_slice(&digits);
                Cow::Owned(out)
            }
            None => Cow::Borrowed(b),
        },
        PgType::Interval => match interval_micros(b) {
            Some(m) => Cow::Owned(m.to_be_bytes().to_vec()),
            None => Cow::Borrowed(b),
        },
        PgType::Jsonb => {
            match serde_json::from_slice::<serde_json::Value>(b.get(1..).unwrap_or_default()) {
                Ok(j) => Cow::Owned(j.to_string().into_bytes()),
                Err(_) => Cow::Borrowed(b),
            }
        }
        _ => Cow::Borrowed(b),
    }
}

/// Whether two binary values of a `ty` column are the same value (a numeric's display scale
/// and jsonb's formatting aside).
pub fn same(ty: &PgType, a: Option<&[u8]>, b: Option<&[u8]>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => match ty {
            PgType::Numeric { .. } => numeric_value(x) == numeric_value(y),
            PgType::Interval => interval_micros(x) == interval_micros(y),
            PgType::Jsonb => {
                let parse = |v: &[u8]| {
                    serde_json::from_slice::<serde_json::Value>(v.get(1..).unwrap_or_default()).ok()
                };
                parse(x) == parse(y)
            }
            _ => x == y,
        },
        _ => false,
    }
}

/// Postgres' valid timestamp range, in microseconds since 2000-01-01 (4714-11-24 BC to 294276 AD).
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;

fn encode_datetime(
    value: SqlValue<'_>,
    conv: &ColumnConv,
    out: &mut BytesMut,
) -> Result<(), ConvError> {
    let ty = &conv.ty;
    // Microseconds since 2000-01-01 UTC (or naive), plus whether a time of day was given.
    let (micros, has_time, time_only) = match value {
        SqlValue::Text(t) => {
            let s = text_of(t, "text")?;
            let p = datetime::parse(s).map_err(|e| ConvError {
                kind: ProblemKind::BadDate,
                detail: format!("'{s}' {e}"),
            })?;
            let day_micros = i64::from(p.days.unwrap_or(0)) * MICROS_PER_DAY;
            // SQLite's own date functions apply the offset: '10:00+03:00' is 07:00 UTC.
            let offset = i64::from(p.offset_secs.unwrap_or(0)) * 1_000_000;
            (day_micros + p.micros - offset, p.has_time, p.days.is_none())
        }
        SqlValue::Integer(_) | SqlValue::Real(_) => match conv.encoding {
            Some(enc) => (numeric_datetime(value, enc)?, true, false),
            None => return err(ProblemKind::NumericDate, numeric_date_hint(value)),
        },
        _ => return mismatch(value, ty),
    };
    if !(MIN_TIMESTAMP..END_TIMESTAMP).contains(&micros) {
        return err(
            ProblemKind::BadDate,
            "outside the range of Postgres timestamps",
        );
    }
    // timestamp(3), say (Prisma's, Laravel's timestamp(0)): Postgres would round the rest.
    if let Some(p) = ty.fraction_digits()
        && micros.rem_euclid(10i64.pow(6 - u32::from(p))) != 0
    {
        return err(
            ProblemKind::Precision,
            format!(
                "{} keeps {p} fractional digits of a second; Postgres would round this value's",
                ty.sql()
            ),
        );
    }
    match ty {
        PgType::Date => {
            if time_only {
                return err(
                    ProblemKind::BadDate,
                    "a time without a date in a date column",
                );
            }
            if micros.rem_euclid(MICROS_PER_DAY) != 0 {
                return err(
                    ProblemKind::Precision,
                    "a date column would drop this value's time of day",
                );
            }
            out.put_i32(micros.div_euclid(MICROS_PER_DAY) as i32);
        }
        PgType::Time { .. } => {
            if !has_time {
                return err(
                    ProblemKind::BadDate,
                    "a date without a time in a time column",
                );
            }
            if !time_only {
                return err(
                    ProblemKind::Precision,
                    "a time column would drop this value's date",
                );
            }
            out.put_i64(micros.rem_euclid(MICROS_PER_DAY));
        }
        _ => {
            if time_only {
                return err(
                    ProblemKind::BadDate,
                    "a time without a date in a timestamp column",
                );
            }
            out.put_i64(micros);
        }
    }
    Ok(())
}

/// SQLAlchemy's `Interval` on SQLite: the date-time 1970-01-01 plus the duration, read back as
/// the `timedelta` SQLAlchemy would read (days, then microseconds of the day; a negative
/// duration is negative days plus a positive time, as Python normalizes it and psycopg sends
/// it). With an encoding, numbers are the duration in that unit.
fn interval_of(value: SqlValue<'_>, conv: &ColumnConv) -> Result<(i32, i64), ConvError> {
    let since_2000 = match value {
        SqlValue::Text(t) => {
            let s = text_of(t, "text")?;
            let not_sqlalchemy = |why: &str| {
                err(
                    ProblemKind::BadDate,
                    format!(
                        "'{s}' {why}: SQLAlchemy's Interval stores a date-time counted from 1970-01-01 00:00:00 (5 s is '1970-01-01 00:00:05.000000')"
                    ),
                )
            };
            let p = match datetime::parse(s) {
                Ok(p) => p,
                Err(e) => return not_sqlalchemy(&e.to_string()),
            };
            let Some(days) = p.days else {
                return not_sqlalchemy("has no date");
            };
            if p.offset_secs.is_some() {
                return not_sqlalchemy("has a UTC offset");
            }
            i64::from(days) * MICROS_PER_DAY + p.micros
        }
        SqlValue::Integer(_) | SqlValue::Real(_) => match conv.encoding {
            Some(enc) => numeric_datetime(value, enc)?,
            None => {
                return err(
                    ProblemKind::NumericDate,
                    "a number in an interval column; if it counts seconds (or ms, us): --cast TABLE.COLUMN=interval:epoch_s (epoch_ms, epoch_us)",
                );
            }
        },
        _ => return mismatch(value, &conv.ty),
    };
    let since_1970 = since_2000 + UNIX_TO_PG_DAYS * MICROS_PER_DAY;
    let days = i32::try_from(since_1970.div_euclid(MICROS_PER_DAY)).or_else(|_| {
        err(
            ProblemKind::OutOfRange,
            "more days than a Postgres interval holds",
        )
    })?;
    Ok((days, since_1970.rem_euclid(MICROS_PER_DAY)))
}

/// An interval's length in microseconds as Postgres compares intervals (a month is 30 days,
/// a day 24 hours): `1 day` and `24:00:00` are equal there.
pub fn interval_micros(b: &[u8]) -> Option<i128> {
    let micros = i64::from_be_bytes(b.get(..8)?.try_into().ok()?);
    let days = i32::from_be_bytes(b.get(8..12)?.try_into().ok()?);
    let months = i32::from_be_bytes(b.get(12..16)?.try_into().ok()?);
    let day = i128::from(MICROS_PER_DAY);
    Some(i128::from(micros) + i128::from(days) * day + i128::from(months) * 30 * day)
}

fn numeric_datetime(value: SqlValue<'_>, enc: SourceEncoding) -> Result<i64, ConvError> {
    let x = match value {
        SqlValue::Integer(i) => i as f64,
        SqlValue::Real(f) => f,
        _ => return err(ProblemKind::TypeMismatch, "not a number"),
    };
    let pg_epoch_unix_micros = UNIX_TO_PG_DAYS as f64 * MICROS_PER_DAY as f64;
    let micros = match (enc, value) {
        // Exact integer arithmetic where the input is an integer.
        (SourceEncoding::EpochS, SqlValue::Integer(i)) => i128::from(i) * 1_000_000,
        (SourceEncoding::EpochMs, SqlValue::Integer(i)) => i128::from(i) * 1_000,
        (SourceEncoding::EpochUs, SqlValue::Integer(i)) => i128::from(i),
        (SourceEncoding::EpochS, _) => (x * 1e6).round() as i128,
        (SourceEncoding::EpochMs, _) => (x * 1e3).round() as i128,
        (SourceEncoding::EpochUs, _) => x.round() as i128,
        // Julian day 2440587.5 is 1970-01-01 00:00 UTC.
        (SourceEncoding::Julian, _) => ((x - 2_440_587.5) * MICROS_PER_DAY as f64).round() as i128,
    };
    let pg = micros - pg_epoch_unix_micros as i128;
    if !x.is_finite() || pg < i128::from(MIN_TIMESTAMP) || pg >= i128::from(END_TIMESTAMP) {
        return err(
            ProblemKind::BadDate,
            "outside the range of Postgres timestamps",
        );
    }
    Ok(pg as i64)
}

fn numeric_date_hint(value: SqlValue<'_>) -> String {
    let x = match value {
        SqlValue::Integer(i) => i as f64,
        SqlValue::Real(f) => f,
        _ => 0.0,
    };
    let guess = if (1.0e12..1.0e13).contains(&x.abs()) {
        "looks like epoch milliseconds: --cast TABLE.COLUMN=epoch_ms"
    } else if (1.0e8..1.0e10).contains(&x.abs()) {
        "looks like epoch seconds: --cast TABLE.COLUMN=epoch_s"
    } else if (1.0e15..1.0e17).contains(&x.abs()) {
        "looks like epoch microseconds: --cast TABLE.COLUMN=epoch_us"
    } else if (2_000_000.0..2_600_000.0).contains(&x) {
        "looks like a julian day number: --cast TABLE.COLUMN=julian"
    } else {
        "say how to read it with --cast TABLE.COLUMN=epoch_s|epoch_ms|epoch_us|julian"
    };
    format!("a number in a date/time column; {guess}")
}

/// A decimal number as sign, digits and a decimal exponent: value = digits * 10^exp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    negative: bool,
    /// Decimal digits without leading zeros (empty for zero).
    digits: Vec<u8>,
    /// Power of ten of the last digit.
    exp: i64,
    /// Digits after the decimal point as written (Postgres' display scale).
    dscale: i64,
}

impl Decimal {
    /// Parses `[+-]digits[.digits][e[+-]digits]`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Decimal> {
        let b = s.as_bytes();
        let mut i = 0;
        let negative = match b.first() {
            Some(b'-') => {
                i = 1;
                true
            }
            Some(b'+') => {
                i = 1;
                false
            }
            _ => false,
        };
        let mut digits = Vec::new();
        let mut frac_len: i64 = 0;
        let mut seen_digit = false;
        let mut seen_point = false;
        while i < b.len() {
            match b[i] {
                d @ b'0'..=b'9' => {
                    seen_digit = true;
                    if !(digits.is_empty() && d == b'0') {
                        digits.push(d - b'0');
                    }
                    if seen_point {
                        frac_len += 1;
                    }
                }
                b'.' if !seen_point => seen_point = true,
                _ => break,
            }
            i += 1;
        }
        if !seen_digit {
            return None;
        }
        let mut exp10: i64 = 0;
        if i < b.len() {
            if b[i] != b'e' && b[i] != b'E' {
                return None;
            }
            let rest = &s[i + 1..];
            if rest.is_empty() || rest.len() > 6 {
                return None;
            }
            exp10 = rest.parse::<i64>().ok()?;
        }
        let exp = exp10 - frac_len;
        let dscale = (-exp).max(0);
        if dscale > 16_383 || exp10.abs() > 100_000 {
            return None;
        }
        Some(Decimal {
            negative: negative && !digits.is_empty(),
            digits,
            exp,
            dscale,
        })
    }

    /// Digits before the decimal point (without leading zeros).
    fn integer_digits(&self) -> i64 {
        (self.digits.len() as i64 + self.exp).max(0)
    }

    fn check_typmod(&self, precision: u32, scale: u32) -> Result<(), ConvError> {
        // Non-zero digits finer than the scale would be rounded away by Postgres.
        let first_kept_exp = -i64::from(scale);
        let last_nonzero = self.digits.iter().rposition(|d| *d != 0);
        if let Some(pos) = last_nonzero {
            let exp_of_last = self.exp + (self.digits.len() - 1 - pos) as i64;
            if exp_of_last < first_kept_exp {
                return err(
                    ProblemKind::Precision,
                    format!(
                        "numeric({precision},{scale}) keeps {scale} decimal places; Postgres would round this value"
                    ),
                );
            }
        }
        if self.integer_digits() > i64::from(precision) - i64::from(scale) {
            return err(
                ProblemKind::OutOfRange,
                format!(
                    "too many digits before the decimal point for numeric({precision},{scale})"
                ),
            );
        }
        Ok(())
    }

    /// Writes Postgres' binary numeric: ndigits, weight, sign, dscale, base-10000 digits.
    pub fn write_binary(&self, out: &mut BytesMut) {
        if self.digits.is_empty() {
            out.put_i16(0);
            out.put_i16(0);
            out.put_u16(0);
            out.put_i16(self.dscale as i16);
            return;
        }
        // Align so that the exponent of the last digit is a multiple of 4.
        let shift = self.exp.rem_euclid(4);
        let mut digits = self.digits.clone();
        digits.extend(std::iter::repeat_n(0u8, shift as usize));
        let low_exp = self.exp - shift;
        let lead = (4 - digits.len() % 4) % 4;
        let mut padded = vec![0u8; lead];
        padded.extend(digits);
        let groups: Vec<i16> = padded
            .chunks(4)
            .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + i16::from(*d)))
            .collect();
        let mut weight = (low_exp / 4) + groups.len() as i64 - 1;
        let mut start = 0;
        while start < groups.len() && groups[start] == 0 {
            start += 1;
            weight -= 1;
        }
        let mut end = groups.len();
        while end > start && groups[end - 1] == 0 {
            end -= 1;
        }
        let kept = &groups[start..end];
        out.put_i16(kept.len() as i16);
        out.put_i16(weight as i16);
        out.put_u16(if self.negative { 0x4000 } else { 0 });
        out.put_i16(self.dscale as i16);
        for g in kept {
            out.put_i16(*g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_with_fewer_fraction_digits_refuses_what_postgres_would_round() {
        let conv = |p| ColumnConv {
            ty: PgType::Timestamp { precision: Some(p) },
            encoding: None,
        };
        let mut out = BytesMut::new();
        let mut enc = |v: &str, p| encode(SqlValue::Text(v.as_bytes()), &conv(p), &mut out);
        assert!(enc("2024-01-31 12:34:56.125", 3).is_ok());
        assert!(enc("2024-01-31 12:34:56", 0).is_ok());
        assert!(enc("2024-01-31 12:34:56.120000", 2).is_ok());
        let e = enc("2024-01-31 12:34:56.1255", 3).unwrap_err();
        assert_eq!(e.kind, ProblemKind::Precision);
        assert!(e.detail.contains("timestamp(3) keeps 3"), "{}", e.detail);
        assert!(enc("2024-01-31 12:34:56.5", 0).is_err());
        // Six digits is every digit Postgres keeps: nothing to refuse.
        assert!(enc("2024-01-31 12:34:56.123456", 6).is_ok());
    }

    fn enc(v: SqlValue<'_>, ty: PgType) -> Result<Vec<u8>, ConvError> {
        let mut out = BytesMut::new();
        encode(v, &ColumnConv { ty, encoding: None }, &mut out)?;
        Ok(out[4..].to_vec())
    }

    #[test]
    fn intervals_are_sqlalchemys_date_times_counted_from_1970() {
        let five = enc(
            SqlValue::Text(b"1970-01-01 00:00:05.123000"),
            PgType::Interval,
        )
        .unwrap();
        assert_eq!(five, [&5_123_000i64.to_be_bytes()[..], &[0; 8]].concat());
        // -5 s: Python's timedelta(days=-1, seconds=86395).
        let back = enc(SqlValue::Text(b"1969-12-31 23:59:55"), PgType::Interval).unwrap();
        let want = [
            &86_395_000_000i64.to_be_bytes()[..],
            &(-1i32).to_be_bytes(),
            &[0; 4],
        ]
        .concat();
        assert_eq!(back, want);
        for bad in ["0", "00:00:05", "1970-01-01 00:00:05+02:00", "soon"] {
            let e = enc(SqlValue::Text(bad.as_bytes()), PgType::Interval).unwrap_err();
            assert_eq!(e.kind, ProblemKind::BadDate, "{bad}: {e:?}");
        }
        assert_eq!(
            enc(SqlValue::Integer(5), PgType::Interval)
                .unwrap_err()
                .kind,
            ProblemKind::NumericDate
        );
        let secs = ColumnConv {
            ty: PgType::Interval,
            encoding: Some(SourceEncoding::EpochS),
        };
        let mut out = BytesMut::new();
        encode(SqlValue::Integer(90_000), &secs, &mut out).unwrap();
        let want = [
            &3_600_000_000i64.to_be_bytes()[..],
            &1i32.to_be_bytes(),
            &[0; 4],
        ]
        .concat();
        assert_eq!(&out[4..], &want[..]);
        // 1 day and 24 hours are one value, as Postgres compares them.
        let a = [&0i64.to_be_bytes()[..], &1i32.to_be_bytes(), &[0; 4]].concat();
        let b = [&86_400_000_000i64.to_be_bytes()[..], &[0; 8]].concat();
        assert!(same(&PgType::Interval, Some(&a), Some(&b)));
    }

    #[test]
    fn numeric_binary_layout() {
        // 1234.5678 -> digits [1234, 5678], weight 0, dscale 4
        let b = enc(
            SqlValue::Text(b"1234.5678"),
            PgType::Numeric { typmod: None },
        )
        .unwrap();
        assert_eq!(b, [0, 2, 0, 0, 0, 0, 0, 4, 0x04, 0xd2, 0x16, 0x2e]);
        // 0.01 -> digit [100], weight -1, dscale 2
        let b = enc(SqlValue::Real(0.01), PgType::Numeric { typmod: None }).unwrap();
        assert_eq!(b, [0, 1, 0xff, 0xff, 0, 0, 0, 2, 0, 100]);
        // -10000 -> digit [1], weight 1
        let b = enc(SqlValue::Integer(-10000), PgType::Numeric { typmod: None }).unwrap();
        assert_eq!(b, [0, 1, 0, 1, 0x40, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn numeric_typmod_is_enforced() {
        let t = PgType::Numeric {
            typmod: Some((5, 2)),
        };
        assert!(enc(SqlValue::Real(123.45), t.clone()).is_ok());
        assert_eq!(
            enc(SqlValue::Real(1.234), t.clone()).unwrap_err().kind,
            ProblemKind::Precision
        );
        assert_eq!(
            enc(SqlValue::Integer(1000), t.clone()).unwrap_err().kind,
            ProblemKind::OutOfRange
        );
        assert!(enc(SqlValue::Text(b"1.500"), t).is_ok());
    }

    #[test]
    fn rejects_what_would_not_survive() {
        assert_eq!(
            enc(SqlValue::Text(b"a\0b"), PgType::Text).unwrap_err().kind,
            ProblemKind::NulByte
        );
        assert_eq!(
            enc(SqlValue::Text(b"\xff"), PgType::Text).unwrap_err().kind,
            ProblemKind::InvalidUtf8
        );
        assert_eq!(
            enc(SqlValue::Integer(1 << 40), PgType::Int4)
                .unwrap_err()
                .kind,
            ProblemKind::OutOfRange
        );
        assert_eq!(
            enc(SqlValue::Text(b"abc"), PgType::Int8).unwrap_err().kind,
            ProblemKind::TypeMismatch
        );
        assert_eq!(
            enc(SqlValue::Text(b""), PgType::Timestamp { precision: None })
                .unwrap_err()
                .kind,
            ProblemKind::BadDate
        );
        assert_eq!(
            enc(
                SqlValue::Integer(1_700_000_000_000),
                PgType::Timestamp { precision: None }
            )
            .unwrap_err()
            .kind,
            ProblemKind::NumericDate
        );
        assert_eq!(
            enc(SqlValue::Real(f64::INFINITY), PgType::Int8)
                .unwrap_err()
                .kind,
            ProblemKind::NonFinite
        );
        assert_eq!(
            enc(SqlValue::Text(br#"{"a":"\u0000"}"#), PgType::Jsonb)
                .unwrap_err()
                .kind,
            ProblemKind::BadJson
        );
        assert!(enc(SqlValue::Text(br#"{"a":"\u0000"}"#), PgType::Json).is_ok());
        assert_eq!(
            enc(SqlValue::Text(b"toolong"), PgType::Varchar { len: Some(3) })
                .unwrap_err()
                .kind,
            ProblemKind::TooLong
        );
        assert_eq!(
            enc(SqlValue::Integer(2), PgType::Bool).unwrap_err().kind,
            ProblemKind::OutOfRange
        );
        assert_eq!(
            enc(SqlValue::Integer(i64::MAX), PgType::Float8)
                .unwrap_err()
                .kind,
            ProblemKind::Precision
        );
    }

    #[test]
    fn uuid_text_with_stray_hyphens_is_rejected_not_a_panic() {
        // Found by fuzz/fuzz_targets/convert.rs.
        let v = format!("5{}", "-".repeat(35));
        assert_eq!(
            enc(SqlValue::Text(v.as_bytes()), PgType::Uuid)
                .unwrap_err()
                .kind,
            ProblemKind::BadUuid
        );
        let v = "01234567-89ab-cdef-0123-456789abcdeg";
        assert_eq!(
            enc(SqlValue::Text(v.as_bytes()), PgType::Uuid)
                .unwrap_err()
                .kind,
            ProblemKind::BadUuid
        );
        assert!(
            enc(
                SqlValue::Text(b"0123456789ABCDEF0123456789abcdef"),
                PgType::Uuid
            )
            .is_ok()
        );
    }

    #[test]
    fn epoch_encodings() {
        let conv = ColumnConv {
            ty: PgType::Timestamp { precision: None },
            encoding: Some(SourceEncoding::EpochMs),
        };
        let mut out = BytesMut::new();
        encode(SqlValue::Integer(946_684_800_000), &conv, &mut out).unwrap();
        assert_eq!(&out[4..], &0i64.to_be_bytes());
        let conv = ColumnConv {
            ty: PgType::Timestamp { precision: None },
            encoding: Some(SourceEncoding::Julian),
        };
        let mut out = BytesMut::new();
        encode(SqlValue::Real(2_451_544.5), &conv, &mut out).unwrap();
        assert_eq!(&out[4..], &0i64.to_be_bytes());
    }
}
