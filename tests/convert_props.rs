//! Property tests: values encoded by sqlite2pg and read back from a real Postgres equal the
//! source; the declared-type and date parsers never panic and agree with their own rules.

mod common;

use std::io::Write;

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use sqlite2pg::datetime;
use sqlite2pg::model::SourceEncoding;
use sqlite2pg::model::{PgType, SqlValue};
use sqlite2pg::pg::convert::{ColumnConv, encode};
use sqlite2pg::pg::copy;
use sqlite2pg::typemap;

fn conv(ty: PgType) -> ColumnConv {
    ColumnConv { ty, encoding: None }
}

#[derive(Debug, Clone)]
struct Case {
    i: i64,
    f: f64,
    int_part: u64,
    frac: String,
    negative: bool,
    ts: (u32, u32, u32, u32, u32, u32, u32),
    text: String,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<i64>(),
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        any::<u64>(),
        "[0-9]{0,30}",
        any::<bool>(),
        (
            1u32..=9999,
            1u32..=12,
            1u32..=28,
            0u32..24,
            0u32..60,
            0u32..60,
            0u32..1_000_000,
        ),
        "[^\u{0}]{0,40}",
    )
        .prop_map(|(i, f, int_part, frac, negative, ts, text)| Case {
            i,
            f,
            int_part,
            frac,
            negative,
            ts,
            text,
        })
}

fn config() -> ProptestConfig {
    // A fixed budget; a failure prints the seed that replays it (PROPTEST_CASES overrides).
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn encoded_values_read_back_equal(cases in proptest::collection::vec(case(), 1..20)) {
        let db = common::TestDb::new();
        let mut c = db.client();
        c.batch_execute("CREATE TABLE v (n int, i bigint, f float8, d numeric, ts timestamp, t text)").unwrap();
        let mut buf = copy::begin_buffer(4096);
        let mut expected = Vec::new();
        for (n, k) in cases.iter().enumerate() {
            let dec = if k.frac.is_empty() { format!("{}", k.int_part) } else { format!("{}.{}", k.int_part, k.frac) };
            let dec = if k.negative { format!("-{dec}") } else { dec };
            let (y, mo, d, h, mi, s, us) = k.ts;
            let ts = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}");
            copy::begin_row(&mut buf, 6);
            encode(SqlValue::Integer(n as i64), &conv(PgType::Int4), &mut buf).unwrap();
            encode(SqlValue::Integer(k.i), &conv(PgType::Int8), &mut buf).unwrap();
            encode(SqlValue::Real(k.f), &conv(PgType::Float8), &mut buf).unwrap();
            encode(SqlValue::Text(dec.as_bytes()), &conv(PgType::Numeric { typmod: None }), &mut buf).unwrap();
            encode(SqlValue::Text(ts.as_bytes()), &conv(PgType::Timestamp { precision: None }), &mut buf).unwrap();
            encode(SqlValue::Text(k.text.as_bytes()), &conv(PgType::Text), &mut buf).unwrap();
            expected.push((dec, ts));
        }
        buf.put_i16(-1);
        let mut w = c.copy_in("COPY v FROM STDIN (FORMAT binary)").unwrap();
        w.write_all(&buf).unwrap();
        w.finish().unwrap();
        let rows = c.query("SELECT i, f, d::text, to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US'), t FROM v ORDER BY n", &[]).unwrap();
        for ((row, k), (dec, ts)) in rows.iter().zip(&cases).zip(&expected) {
            prop_assert_eq!(row.get::<_, i64>(0), k.i);
            prop_assert_eq!(row.get::<_, f64>(1).to_bits() == k.f.to_bits() || (k.f == 0.0 && row.get::<_, f64>(1) == 0.0), true);
            let got: String = row.get(2);
            // Postgres prints what was sent, bar a sign on zero.
            let want = if dec.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') { dec.trim_start_matches('-').to_string() } else { dec.clone() };
            prop_assert_eq!(got, want);
            prop_assert_eq!(row.get::<_, String>(3), ts.clone());
            prop_assert_eq!(row.get::<_, String>(4), k.text.clone());
        }
    }

    /// SQLAlchemy's Interval on SQLite (1970-01-01 plus the duration, as text) lands as the
    /// same duration in a Postgres interval, negative ones included.
    #[test]
    fn sqlalchemy_intervals_read_back_as_the_same_duration(durations in proptest::collection::vec(-62_000_000_000_000_000i64..250_000_000_000_000_000, 1..20)) {
        let db = common::TestDb::new();
        let mut c = db.client();
        c.batch_execute("CREATE TABLE v (n int, d interval)").unwrap();
        let mut buf = copy::begin_buffer(4096);
        let mut texts = Vec::new();
        for (n, us) in durations.iter().enumerate() {
            let day = 86_400_000_000i64;
            let (y, m, d) = datetime::civil_from_days(us.div_euclid(day));
            let rem = us.rem_euclid(day);
            let text = format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}", rem / 3_600_000_000, rem / 60_000_000 % 60, rem / 1_000_000 % 60, rem % 1_000_000);
            copy::begin_row(&mut buf, 2);
            encode(SqlValue::Integer(n as i64), &conv(PgType::Int4), &mut buf).unwrap();
            encode(SqlValue::Text(text.as_bytes()), &conv(PgType::Interval), &mut buf).unwrap();
            texts.push(text);
        }
        buf.put_i16(-1);
        let mut w = c.copy_in("COPY v FROM STDIN (FORMAT binary)").unwrap();
        w.write_all(&buf).unwrap();
        w.finish().unwrap();
        let rows = c.query("SELECT (extract(epoch FROM d) * 1000000)::bigint, to_char('1970-01-01'::timestamp + d, 'YYYY-MM-DD HH24:MI:SS.US') FROM v ORDER BY n", &[]).unwrap();
        for ((row, us), text) in rows.iter().zip(&durations).zip(&texts) {
            prop_assert_eq!(row.get::<_, i64>(0), *us);
            prop_assert_eq!(&row.get::<_, String>(1), text);
        }
    }

    #[test]
    fn declared_type_parser_never_panics_and_ignores_case_and_spacing(decl in "\\PC{0,30}") {
        let a = typemap::map_decltype(&decl);
        prop_assert_eq!(&a, &typemap::map_decltype(&decl.to_ascii_lowercase()));
        let spaced = decl.split_whitespace().collect::<Vec<_>>().join("  ");
        prop_assert_eq!(&typemap::affinity(&decl), &typemap::affinity(&decl.to_ascii_uppercase()));
        let _ = typemap::map_decltype(&spaced);
    }

    #[test]
    fn date_parser_agrees_with_the_calendar(y in 1i64..=9999, doy in 0i64..365, secs in 0i64..86_400, us in 0i64..1_000_000) {
        let days = datetime::days_from_civil(y, 1, 1) + doy;
        let (yy, m, d) = datetime::civil_from_days(days);
        let text = format!("{yy:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{us:06}Z", secs / 3600, secs / 60 % 60, secs % 60);
        let p = datetime::parse(&text).unwrap();
        prop_assert_eq!(i64::from(p.days.unwrap()), days - datetime::UNIX_TO_PG_DAYS);
        prop_assert_eq!(p.micros, secs * 1_000_000 + us);
        prop_assert_eq!(p.offset_secs, Some(0));
    }

    #[test]
    fn date_parser_never_panics(s in "\\PC{0,40}") {
        let _ = datetime::parse(&s);
    }

    #[test]
    fn epoch_ms_and_text_agree(ms in -2_000_000_000_000i64..9_000_000_000_000) {
        let mut a = BytesMut::new();
        encode(SqlValue::Integer(ms), &ColumnConv { ty: PgType::Timestamp { precision: None }, encoding: Some(SourceEncoding::EpochMs) }, &mut a).unwrap();
        let days = ms.div_euclid(86_400_000);
        let rem = ms.rem_euclid(86_400_000);
        let (y, m, d) = datetime::civil_from_days(days);
        prop_assume!(y >= 1);
        let text = format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}", rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
        let mut b = BytesMut::new();
        encode(SqlValue::Text(text.as_bytes()), &conv(PgType::Timestamp { precision: None }), &mut b).unwrap();
        prop_assert_eq!(a, b);
    }
}
