#![no_main]
//! Text values into every target type: never panic, and a failed encode leaves the buffer as it was.
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sqlite2pg::model::{PgType, SqlValue};
use sqlite2pg::pg::convert::{ColumnConv, encode};

fuzz_target!(|data: &[u8]| {
    let types = [
        PgType::Bool, PgType::Int2, PgType::Int4, PgType::Int8, PgType::Float8,
        PgType::Numeric { typmod: None }, PgType::Numeric { typmod: Some((12, 2)) }, PgType::Text,
        PgType::Varchar { len: Some(8) }, PgType::Bytea, PgType::Date, PgType::Time { precision: None }, PgType::Timestamp { precision: Some(3) },
        PgType::Timestamptz { precision: None }, PgType::Timestamp { precision: None }, PgType::Json, PgType::Jsonb, PgType::Uuid,
    ];
    for ty in types {
        let mut out = BytesMut::from(&b"prefix"[..]);
        let c = ColumnConv { ty, encoding: None };
        if encode(SqlValue::Text(data), &c, &mut out).is_err() {
            assert_eq!(&out[..], b"prefix");
        }
    }
});
