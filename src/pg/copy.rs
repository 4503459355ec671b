//! Binary COPY: rows already encoded field by field, framed and streamed to the server.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::Transaction;

use super::{qualified, quote_ident};
use crate::error::{Error, Result};

const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Starts a binary COPY buffer: the signature, flags and header extension length.
pub fn begin_buffer(capacity: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(capacity);
    buf.put_slice(HEADER);
    buf.put_i32(0);
    buf.put_i32(0);
    buf
}

/// Starts one tuple of `fields` fields.
pub fn begin_row(buf: &mut BytesMut, fields: usize) {
    buf.put_i16(fields as i16);
}

/// Appends one field already in binary form; `None` is NULL.
pub fn put_field(buf: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        Some(b) => {
            buf.put_i32(b.len() as i32);
            buf.put_slice(b);
        }
        None => buf.put_i32(-1),
    }
}

/// Streams a buffer made by `begin_buffer`/`begin_row`/`convert::encode` into a table
/// (`schema` None: a table of the session, such as a temp table) and returns the number of rows
/// the server stored.
pub async fn copy_in(
    tx: &Transaction<'_>,
    schema: Option<&str>,
    table: &str,
    columns: &[String],
    buf: BytesMut,
) -> Result<u64> {
    copy_in_bytes(tx, schema, table, columns, buf.freeze()).await
}

/// [`copy_in`] of a frozen buffer (a clone of it is cheap, for reading a failed row back).
pub async fn copy_in_bytes(
    tx: &Transaction<'_>,
    schema: Option<&str>,
    table: &str,
    columns: &[String],
    buf: Bytes,
) -> Result<u64> {
    let sql = statement(schema, table, columns);
    let ctx = |e| Error::from_pg(format!("COPY into table {table} failed"), e);
    let sink = tx.copy_in::<_, Bytes>(&sql).await.map_err(ctx)?;
    futures_util::pin_mut!(sink);
    sink.send(buf).await.map_err(ctx)?;
    sink.send(Bytes::from_static(&TRAILER)).await.map_err(ctx)?;
    sink.as_mut().finish().await.map_err(ctx)
}

/// The statement that COPYs binary rows of `columns` into a table (`schema` None: a table
/// of the session).
pub(crate) fn statement(schema: Option<&str>, table: &str, columns: &[String]) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let relation = match schema {
        Some(s) => qualified(s, table),
        None => quote_ident(table),
    };
    format!(
        "COPY {relation} ({}) FROM STDIN (FORMAT binary)",
        cols.join(", ")
    )
}

/// The file trailer: a tuple of -1 fields.
pub const TRAILER: [u8; 2] = (-1i16).to_be_bytes();

/// The raw bytes of field `field` of tuple `row` (both from 0) of a buffer made by
/// `begin_buffer`: `Some(None)` for NULL, `None` when the buffer has no such field.
pub fn field(buf: &[u8], row: usize, field: usize) -> Option<Option<&[u8]>> {
    let mut at = HEADER.len() + 8;
    let i16_at = |at: usize| -> Option<i16> {
        Some(i16::from_be_bytes(buf.get(at..at + 2)?.try_into().ok()?))
    };
    let i32_at = |at: usize| -> Option<i32> {
        Some(i32::from_be_bytes(buf.get(at..at + 4)?.try_into().ok()?))
    };
    for r in 0..=row {
        let n = i16_at(at)?;
        at += 2;
        if n < 0 {
            return None;
        }
        for f in 0..n as usize {
            let len = i32_at(at)?;
            at += 4;
            let bytes = if len < 0 {
                None
            } else {
                let b = buf.get(at..at + len as usize)?;
                at += len as usize;
                Some(b)
            };
            if r == row && f == field {
                return Some(bytes);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_field_back() {
        let mut b = begin_buffer(64);
        for (x, y) in [(&b"ab"[..], None), (&b""[..], Some(&b"xyz"[..]))] {
            begin_row(&mut b, 2);
            b.put_i32(x.len() as i32);
            b.put_slice(x);
            match y {
                Some(y) => {
                    b.put_i32(y.len() as i32);
                    b.put_slice(y);
                }
                None => b.put_i32(-1),
            }
        }
        assert_eq!(field(&b, 0, 0), Some(Some(&b"ab"[..])));
        assert_eq!(field(&b, 0, 1), Some(None));
        assert_eq!(field(&b, 1, 0), Some(Some(&b""[..])));
        assert_eq!(field(&b, 1, 1), Some(Some(&b"xyz"[..])));
        assert_eq!(field(&b, 2, 0), None);
        assert_eq!(field(&b, 0, 2), None);
    }
}
