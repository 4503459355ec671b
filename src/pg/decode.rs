//! The inverse of `convert`: one Postgres binary value back into the SQLite value the app
//! would have written, in the column's own form (`sqlite::form`). Every decoded value is
//! encoded again and compared with the original ([`exact`]): one that would not convert back
//! to the same Postgres value is refused, never written.

use bytes::BytesMut;

use super::convert::{self, ColumnConv, ConvError, ProblemKind};
use crate::datetime::{MICROS_PER_DAY, UNIX_TO_PG_DAYS, civil_from_days};
use crate::form::{Class, ColumnForm};
use crate::model::SourceEncoding;
use crate::model::{OwnedValue, PgType};

fn fail<T>(kind: ProblemKind, detail: impl Into<String>) -> Result<T, ConvError> {
    Err(ConvError {
        kind,
        detail: detail.into(),
    })
}

fn short(raw: &[u8]) -> ConvError {
    ConvError {
        kind: ProblemKind::TypeMismatch,
        detail: format!("a Postgres value of {} bytes is too short", raw.len()),
    }
}

fn be<const N: usize>(raw: &[u8], at: usize) -> Result<[u8; N], ConvError> {
    raw.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| short(raw))
}

/// A numeric's binary form as decimal text (`-12.50`, scale kept).
pub fn numeric_text(raw: &[u8]) -> Result<String, ConvError> {
    let ndigits = u16::from_be_bytes(be(raw, 0)?) as usize;
    let weight = i16::from_be_bytes(be(raw, 2)?) as i64;
    let sign = u16::from_be_bytes(be(raw, 4)?);
    let dscale = u16::from_be_bytes(be(raw, 6)?) as usize;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return fail(ProblemKind::NonFinite, "NaN, which SQLite cannot hold"),
        _ => return fail(ProblemKind::NonFinite, "an infinite numeric"),
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| be::<2>(raw, 8 + 2 * i).map(u16::from_be_bytes))
        .collect::<Result<_, _>>()?;
    let digit = |i: i64| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut int = String::new();
    for w in 0..=weight.max(0) {
        let d = digit(w);
        if int.is_empty() {
            if d != 0 || w == weight {
                int = d.to_string();
            }
        } else {
            int.push_str(&format!("{d:04}"));
        }
    }
    if int.is_empty() || weight < 0 {
        int = "0".into();
    }
    let mut frac = String::new();
    let mut i = weight + 1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", digit(i)));
        i += 1;
    }
    frac.truncate(dscale);
    let negative = sign == 0x4000 && (int != "0" || frac.bytes().any(|b| b != b'0'));
    Ok(format!(
        "{}{int}{}{frac}",
        if negative { "-" } else { "" },
        if dscale > 0 { "." } else { "" }
    ))
}

/// A value in the column's storage class, where that holds it exactly.
fn in_class(v: OwnedValue, class: Option<Class>) -> OwnedValue {
    match (class, v) {
        (Some(Class::Text), OwnedValue::Integer(i)) => OwnedValue::Text(i.to_string().into()),
        (Some(Class::Text), OwnedValue::Real(f)) => OwnedValue::Text(format!("{f:?}").into()),
        (Some(Class::Integer), OwnedValue::Real(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            OwnedValue::Integer(f as i64)
        }
        (Some(Class::Real), OwnedValue::Integer(i)) if (i as f64) as i64 == i => {
            OwnedValue::Real(i as f64)
        }
        (_, v) => v,
    }
}

/// Decodes one non-NULL binary value of a column converted by `conv`.
pub fn decode(raw: &[u8], conv: &ColumnConv, form: &ColumnForm) -> Result<OwnedValue, ConvError> {
    let text = |s: String| OwnedValue::Text(s.into_bytes());
    Ok(match &conv.ty {
        PgType::Bool => {
            let b = be::<1>(raw, 0)?[0] != 0;
            match (&form.bool_words, form.class) {
                (Some((t, f)), Some(Class::Text)) => text(if b { t.clone() } else { f.clone() }),
                _ => OwnedValue::Integer(i64::from(b)),
            }
        }
        PgType::Int2 => in_class(
            OwnedValue::Integer(i16::from_be_bytes(be(raw, 0)?).into()),
            form.class,
        ),
        PgType::Int4 => in_class(
            OwnedValue::Integer(i32::from_be_bytes(be(raw, 0)?).into()),
            form.class,
        ),
        PgType::Int8 => in_class(
            OwnedValue::Integer(i64::from_be_bytes(be(raw, 0)?)),
            form.class,
        ),
        PgType::Float4 => in_class(
            OwnedValue::Real(f32::from_be_bytes(be(raw, 0)?).into()),
            form.class,
        ),
        PgType::Float8 => {
            let f = f64::from_be_bytes(be(raw, 0)?);
            if f.is_nan() {
                return fail(ProblemKind::NonFinite, "NaN, which SQLite cannot hold");
            }
            in_class(OwnedValue::Real(f), form.class)
        }
        PgType::Numeric { .. } => {
            let s = numeric_text(raw)?;
            match form.class {
                Some(Class::Integer) | Some(Class::Real) => match s.parse::<i64>() {
                    Ok(i) if form.class == Some(Class::Integer) => OwnedValue::Integer(i),
                    _ => match s.parse::<f64>() {
                        Ok(f) => in_class(OwnedValue::Real(f), form.class),
                        Err(_) => text(s),
                    },
                },
                // Text: the column's NUMERIC affinity (if any) stores it as SQLite would store
                // the app's literal.
                _ => text(s),
            }
        }
        PgType::Text | PgType::Varchar { .. } | PgType::Bpchar { .. } | PgType::Enum { .. } => {
            let s = std::str::from_utf8(raw).map_err(|_| ConvError {
                kind: ProblemKind::InvalidUtf8,
                detail: "text from Postgres that is not UTF-8".into(),
            })?;
            match form.class {
                Some(Class::Integer) => match s.parse::<i64>() {
                    Ok(i) if i.to_string() == s => OwnedValue::Integer(i),
                    _ => text(s.to_string()),
                },
                _ => text(s.to_string()),
            }
        }
        PgType::Bytea => match (form.class, std::str::from_utf8(raw)) {
            (Some(Class::Text), Ok(s)) => text(s.to_string()),
            _ => OwnedValue::Blob(raw.to_vec()),
        },
        PgType::Json => OwnedValue::Text(raw.to_vec()),
        // Version byte, then Postgres' normalized text: written as the app's serializer writes
        // JSON (its key order, spacing and escapes), since an app on SQLite compares JSON as
        // text. Left as it is when SQLite showed no JSON to learn from.
        PgType::Jsonb => {
            let pg_text = raw.get(1..).ok_or_else(|| short(raw))?;
            let in_form = form.json.as_ref().and_then(|f| {
                let node = crate::jsontext::parse(std::str::from_utf8(pg_text).ok()?)?;
                Some(crate::jsontext::render(&node, f))
            });
            match in_form {
                Some(t) => text(t),
                None => OwnedValue::Text(pg_text.to_vec()),
            }
        }
        PgType::Uuid => {
            let b = raw.get(..16).ok_or_else(|| short(raw))?;
            if form.class == Some(Class::Blob) {
                OwnedValue::Blob(b.to_vec())
            } else {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                let mut s = if form.uuid_bare {
                    hex
                } else {
                    format!(
                        "{}-{}-{}-{}-{}",
                        &hex[..8],
                        &hex[8..12],
                        &hex[12..16],
                        &hex[16..20],
                        &hex[20..]
                    )
                };
                if form.uuid_upper {
                    s.make_ascii_uppercase();
                }
                text(s)
            }
        }
        PgType::Date => {
            let days = i32::from_be_bytes(be(raw, 0)?);
            if days == i32::MAX || days == i32::MIN {
                return fail(
                    ProblemKind::BadDate,
                    "an infinite date, which SQLite cannot hold",
                );
            }
            date_value(i64::from(days) * MICROS_PER_DAY, conv, form, false)?
        }
        PgType::Time { .. } => text(form.date.time(i64::from_be_bytes(be(raw, 0)?))),
        PgType::Timestamp { .. } | PgType::Timestamptz { .. } => {
            let micros = i64::from_be_bytes(be(raw, 0)?);
            if micros == i64::MAX || micros == i64::MIN {
                return fail(
                    ProblemKind::BadDate,
                    "an infinite timestamp, which SQLite cannot hold",
                );
            }
            date_value(micros, conv, form, true)?
        }
        PgType::Interval => {
            let micros = convert::interval_micros(raw).ok_or_else(|| short(raw))?;
            // Months count 30 days, as Postgres compares them and psycopg reads them into the
            // app's timedelta.
            let since_2000 = micros - i128::from(UNIX_TO_PG_DAYS) * i128::from(MICROS_PER_DAY);
            let since_2000 = i64::try_from(since_2000).map_err(|_| ConvError {
                kind: ProblemKind::OutOfRange,
                detail: "an interval too long for a SQLite date-time".into(),
            })?;
            date_value(since_2000, conv, form, true)?
        }
        PgType::Unsupported { name } => {
            return fail(
                ProblemKind::UnsupportedType,
                format!("sqlite2pg cannot read the Postgres type {name}"),
            );
        }
    })
}

/// A date or timestamp (microseconds since 2000-01-01) as the column keeps it.
fn date_value(
    micros: i64,
    conv: &ColumnConv,
    form: &ColumnForm,
    with_time: bool,
) -> Result<OwnedValue, ConvError> {
    let unix_micros = micros as i128 + i128::from(UNIX_TO_PG_DAYS) * i128::from(MICROS_PER_DAY);
    if let Some(enc) = conv.encoding {
        let exact = |unit: i128| {
            if unix_micros % unit == 0 {
                in_class(OwnedValue::Integer((unix_micros / unit) as i64), form.class)
            } else {
                OwnedValue::Real(unix_micros as f64 / unit as f64)
            }
        };
        return Ok(match enc {
            SourceEncoding::EpochS => exact(1_000_000),
            SourceEncoding::EpochMs => exact(1_000),
            SourceEncoding::EpochUs => exact(1),
            SourceEncoding::Julian => {
                OwnedValue::Real(unix_micros as f64 / MICROS_PER_DAY as f64 + 2_440_587.5)
            }
        });
    }
    let days = micros.div_euclid(MICROS_PER_DAY);
    let (y, m, d) = civil_from_days(days + UNIX_TO_PG_DAYS);
    if !(0..=9999).contains(&y) {
        return fail(
            ProblemKind::BadDate,
            format!("year {y}, which SQLite's date functions cannot read"),
        );
    }
    let mut s = format!("{y:04}-{m:02}-{d:02}");
    if with_time {
        s.push(form.date.separator);
        s.push_str(&form.date.time(micros.rem_euclid(MICROS_PER_DAY)));
    }
    Ok(OwnedValue::Text(s.into_bytes()))
}

/// Whether `value` converts back to exactly `raw` (the check every decoded value passes).
pub fn exact(value: &OwnedValue, raw: &[u8], conv: &ColumnConv, scratch: &mut BytesMut) -> bool {
    scratch.clear();
    convert::encode(value.as_ref(), conv, scratch).is_ok()
        && convert::same(&conv.ty, Some(&scratch[4..]), Some(raw))
}

/// Decodes and proves the round trip; the error says what cannot come back identically.
pub fn decode_exact(
    raw: &[u8],
    conv: &ColumnConv,
    form: &ColumnForm,
    scratch: &mut BytesMut,
) -> Result<OwnedValue, ConvError> {
    let v = decode(raw, conv, form)?;
    if exact(&v, raw, conv, scratch) {
        Ok(v)
    } else {
        fail(
            ProblemKind::Precision,
            format!(
                "{} in SQLite would not convert back to the same {} value",
                v.as_ref().display(),
                conv.ty.sql()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::form::{DateTemplate, Fraction, Suffix};

    fn conv(ty: PgType) -> ColumnConv {
        ColumnConv { ty, encoding: None }
    }

    #[test]
    fn sqlalchemy_intervals_come_back_in_their_stored_form() {
        let form = ColumnForm::default();
        for s in [
            "1970-01-01 00:00:05.123000",
            "1969-12-31 23:59:55.000000",
            "1970-03-02 01:00:00.000001",
        ] {
            let v = OwnedValue::Text(s.as_bytes().to_vec());
            assert_eq!(round(v.clone(), PgType::Interval, &form), v);
        }
        // One month from Postgres is the 30 days the app's timedelta read there.
        let mut raw = vec![0u8; 12];
        raw.extend_from_slice(&1i32.to_be_bytes());
        let v = decode(&raw, &conv(PgType::Interval), &form).unwrap();
        assert_eq!(v, OwnedValue::Text(b"1970-01-31 00:00:00.000000".to_vec()));
    }

    fn round(v: OwnedValue, ty: PgType, form: &ColumnForm) -> OwnedValue {
        let c = conv(ty);
        let mut b = BytesMut::new();
        convert::encode(v.as_ref(), &c, &mut b).unwrap();
        decode_exact(&b[4..], &c, form, &mut BytesMut::new()).unwrap()
    }

    #[test]
    fn numerics_come_back_with_their_scale() {
        for s in [
            "0",
            "-0.5",
            "12.50",
            "10000",
            "123456789.000001",
            "0.0001",
            "-99999.9999",
        ] {
            let c = conv(PgType::Numeric { typmod: None });
            let mut b = BytesMut::new();
            convert::encode(crate::model::SqlValue::Text(s.as_bytes()), &c, &mut b).unwrap();
            assert_eq!(numeric_text(&b[4..]).unwrap(), s);
        }
    }

    #[test]
    fn dates_come_back_in_the_columns_text_form() {
        let form = ColumnForm {
            date: DateTemplate {
                separator: 'T',
                seconds: true,
                fraction: Fraction::Fixed(3),
                suffix: Suffix::Z,
            },
            ..ColumnForm::default()
        };
        let v = OwnedValue::Text(b"2024-02-29T23:59:58.125Z".to_vec());
        assert_eq!(
            round(v.clone(), PgType::Timestamptz { precision: None }, &form),
            v
        );
        let d = OwnedValue::Text(b"1999-12-31".to_vec());
        assert_eq!(round(d.clone(), PgType::Date, &form), d);
    }

    #[test]
    fn booleans_and_uuids_keep_their_spelling() {
        let form = ColumnForm {
            class: Some(Class::Text),
            bool_words: Some(("yes".into(), "no".into())),
            uuid_upper: true,
            ..ColumnForm::default()
        };
        let b = OwnedValue::Text(b"no".to_vec());
        assert_eq!(
            round(b, PgType::Bool, &form),
            OwnedValue::Text(b"no".to_vec())
        );
        let u = OwnedValue::Text(b"0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0".to_vec());
        assert_eq!(round(u.clone(), PgType::Uuid, &form), u);
        let i = OwnedValue::Integer(1);
        assert_eq!(round(i.clone(), PgType::Bool, &ColumnForm::default()), i);
    }
}
