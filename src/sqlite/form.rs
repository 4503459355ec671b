//! How SQLite holds each column's values ([`crate::form`]), learned from the values a column
//! has: what the reverse stream writes back must look as the app's own writes did, not merely
//! mean the same.

use rusqlite::Connection;

use super::quote_ident;
use crate::error::{Error, Result};
use crate::form::{Class, ColumnForm, DateTemplate, Fraction, Suffix};
use crate::model::PgType;

/// Values sampled per column.
const SAMPLE: usize = 1_000;
/// Rows looked at per column at most: a column that is mostly NULL must not cost a scan of a
/// large table at every daemon start.
const SCAN: usize = 20_000;

fn class_of(v: rusqlite::types::ValueRef<'_>) -> Option<Class> {
    use rusqlite::types::ValueRef as V;
    match v {
        V::Null => None,
        V::Integer(_) => Some(Class::Integer),
        V::Real(_) => Some(Class::Real),
        V::Text(_) => Some(Class::Text),
        V::Blob(_) => Some(Class::Blob),
    }
}

/// Reads a date/time text's template, if it is one.
fn template_of(s: &str) -> Option<(DateTemplate, usize)> {
    let b = s.as_bytes();
    let (separator, time) = if b.len() >= 10 && b[4] == b'-' && b[7] == b'-' {
        match b.get(10) {
            None => return Some((DateTemplate::default(), 0)),
            Some(c @ (b' ' | b'T')) => (*c as char, &s[11..]),
            Some(_) => return None,
        }
    } else {
        (' ', s)
    };
    let tb = time.as_bytes();
    if tb.len() < 5 || tb[2] != b':' {
        return None;
    }
    let seconds = tb.len() >= 8 && tb[5] == b':';
    // Text from the app: any byte may be the start of a wide character.
    let mut rest = time.get(if seconds { 8 } else { 5 }..)?;
    let mut digits = 0;
    if let Some(r) = rest.strip_prefix('.') {
        digits = r.bytes().take_while(u8::is_ascii_digit).count();
        rest = &r[digits..];
    }
    let suffix = match rest {
        "" => Suffix::None,
        "Z" | "z" => Suffix::Z,
        _ => Suffix::Offset,
    };
    Some((
        DateTemplate {
            separator,
            seconds,
            fraction: Fraction::Fixed(digits.min(6) as u8),
            suffix,
        },
        digits,
    ))
}

/// The `(true, false)` pair a boolean spelling belongs to, in its case.
fn bool_pair(word: &str) -> Option<(String, String)> {
    let pairs = [
        ("true", "false"),
        ("t", "f"),
        ("yes", "no"),
        ("y", "n"),
        ("on", "off"),
        ("1", "0"),
    ];
    let lower = word.to_ascii_lowercase();
    let (t, f) = pairs.iter().find(|(t, f)| lower == *t || lower == *f)?;
    let case = |w: &str| {
        if word.chars().all(|c| c.is_ascii_uppercase()) {
            w.to_ascii_uppercase()
        } else if word.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        } else {
            w.to_string()
        }
    };
    Some((case(t), case(f)))
}

/// Learns the form of each of `columns` (with their Postgres types) from up to a thousand of
/// the values each holds (among the table's first rows).
pub fn learn(
    conn: &Connection,
    table: &str,
    columns: &[(&str, &PgType)],
) -> Result<Vec<ColumnForm>> {
    columns
        .iter()
        .map(|(name, ty)| learn_column(conn, table, name, ty))
        .collect()
}

fn learn_column(conn: &Connection, table: &str, column: &str, ty: &PgType) -> Result<ColumnForm> {
    let err = |e| Error::from_sqlite(format!("cannot read column {table}.{column}"), e);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT v FROM (SELECT {c} AS v FROM {t} LIMIT {SCAN}) WHERE v IS NOT NULL LIMIT {SAMPLE}",
            c = quote_ident(column),
            t = quote_ident(table)
        ))
        .map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    let mut counts = [0usize; 4];
    let mut form = ColumnForm::default();
    let mut fraction_digits = std::collections::BTreeSet::new();
    let mut template: Option<DateTemplate> = None;
    let mut json = crate::jsontext::Learned::default();
    while let Some(r) = rows.next().map_err(err)? {
        let v = r.get_ref(0).map_err(err)?;
        let Some(class) = class_of(v) else { continue };
        counts[class as usize] += 1;
        let rusqlite::types::ValueRef::Text(t) = v else {
            continue;
        };
        let Ok(s) = std::str::from_utf8(t) else {
            continue;
        };
        match ty {
            PgType::Date
            | PgType::Time { .. }
            | PgType::Timestamp { .. }
            | PgType::Timestamptz { .. }
            | PgType::Interval => {
                if let Some((t, digits)) = template_of(s) {
                    fraction_digits.insert(digits);
                    let first = template.get_or_insert(t);
                    let shape = |t: &DateTemplate| (t.separator, t.seconds, t.suffix);
                    form.mixed_date_forms |= shape(first) != shape(&t);
                    form.local_offsets |= t.suffix == Suffix::Offset
                        && !s.ends_with("+00:00")
                        && !s.ends_with("-00:00");
                }
            }
            PgType::Bool if form.bool_words.is_none() => form.bool_words = bool_pair(s),
            PgType::Json | PgType::Jsonb => json.read(s),
            PgType::Uuid => {
                form.uuid_upper = s.chars().any(|c| c.is_ascii_uppercase());
                form.uuid_bare = !s.contains('-');
            }
            _ => {}
        }
    }
    let classes = [Class::Integer, Class::Real, Class::Text, Class::Blob];
    form.class = counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .max_by_key(|(_, n)| **n)
        .map(|(i, _)| classes[i]);
    form.json = json.form();
    if let Some(mut t) = template {
        let seen: Vec<usize> = fraction_digits.into_iter().collect();
        t.fraction = match seen.as_slice() {
            [0, 6] => Fraction::SixOrNone,
            _ => Fraction::Fixed(seen.last().copied().unwrap_or(0).min(6) as u8),
        };
        form.date = t;
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_read_from_the_usual_writers() {
        let (t, d) = template_of("2024-05-01 09:30:00.123456").unwrap();
        assert_eq!(
            (t.separator, t.seconds, t.suffix, d),
            (' ', true, Suffix::None, 6)
        );
        let (t, d) = template_of("2024-05-01T09:30:00Z").unwrap();
        assert_eq!((t.separator, t.suffix, d), ('T', Suffix::Z, 0));
        let (t, _) = template_of("2024-05-01T09:30+02:00").unwrap();
        assert_eq!((t.seconds, t.suffix), (false, Suffix::Offset));
        assert!(template_of("yesterday").is_none());
    }

    #[test]
    fn times_keep_the_columns_digits_unless_a_value_needs_more() {
        let t = DateTemplate {
            fraction: Fraction::Fixed(3),
            ..DateTemplate::default()
        };
        assert_eq!(t.time(34_200_123_000), "09:30:00.123");
        assert_eq!(t.time(34_200_123_456), "09:30:00.123456");
        let p = DateTemplate {
            fraction: Fraction::SixOrNone,
            ..DateTemplate::default()
        };
        assert_eq!(p.time(34_200_000_000), "09:30:00");
        assert_eq!(p.time(34_200_000_001), "09:30:00.000001");
    }

    proptest::proptest! {
        /// Whatever text a date column holds, reading its template never panics.
        #[test]
        fn any_text_is_read_or_refused(s in "\\PC{0,40}") {
            let _ = template_of(&s);
            let _ = template_of(&format!("2024-05-01 12:{s}"));
        }
    }

    #[test]
    fn wide_characters_after_the_hour_are_refused() {
        assert!(template_of("2024-05-01 12:€0").is_none());
    }

    #[test]
    fn boolean_words_keep_their_case() {
        assert_eq!(bool_pair("False"), Some(("True".into(), "False".into())));
        assert_eq!(bool_pair("Y"), Some(("Y".into(), "N".into())));
        assert_eq!(bool_pair("maybe"), None);
    }
}
