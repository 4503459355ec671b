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

/// Streams a buffer made by `begin_buffer`/`begin_row`/`convert::encode` into a table
/// (`schema` None: a table of the session, such as a temp table) and returns the number of rows
/// the server stored.
pub async fn copy_in(
    tx: &Transaction<'_>,
    schema: Option<&str>,
    table: &str,
    columns: &[String],
    mut buf: BytesMut,
) -> Result<u64> {
    buf.put_i16(-1);
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let relation = match schema {
        Some(s) => qualified(s, table),
        None => quote_ident(table),
    };
    let sql = format!(
        "COPY {relation} ({}) FROM STDIN (FORMAT binary)",
        cols.join(", ")
    );
    let ctx = |e| Error::from_pg(format!("COPY into table {table} failed"), e);
    let sink = tx.copy_in::<_, Bytes>(&sql).await.map_err(ctx)?;
    futures_util::pin_mut!(sink);
    sink.send(buf.freeze()).await.map_err(ctx)?;
    sink.as_mut().finish().await.map_err(ctx)
}
