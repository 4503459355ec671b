//! Target rows found by key: SQLite's keys, encoded exactly as apply encodes them, are sent as
//! binary arrays and joined against the table on the key columns' own types. A key of any type
//! (boolean, uuid, timestamp, enum, a NOCASE text) finds its row this way, with its index, and
//! no text form of a value has to agree between the two databases.

use std::collections::HashMap;
use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use tokio_postgres::GenericClient;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type, to_sql_checked};

use super::scan::Raw;
use super::{Rows, qualified, quote_ident};
use crate::error::{Error, Result};
use crate::model::PgType;

/// Values already in Postgres' binary form, sent as a one-dimensional array of the element
/// type the statement declares (`$2::uuid[]`).
#[derive(Debug, Clone)]
pub struct EncodedArray(pub Vec<Option<Vec<u8>>>);

impl ToSql for EncodedArray {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let Kind::Array(member) = ty.kind() else {
            return Err(format!("parameter of type {ty} is not an array").into());
        };
        out.put_i32(1);
        out.put_i32(i32::from(self.0.iter().any(Option::is_none)));
        out.put_u32(member.oid());
        out.put_i32(i32::try_from(self.0.len())?);
        out.put_i32(1);
        for v in &self.0 {
            match v {
                Some(b) => {
                    out.put_i32(i32::try_from(b.len())?);
                    out.put_slice(b);
                }
                None => out.put_i32(-1),
            }
        }
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }
    to_sql_checked!();
}

/// `t.<column> = <other>`: equal as the key's type compares; json has no equality, so its
/// text (which json keeps exactly as written) is compared.
pub fn key_equal(column: &str, ty: &PgType, other: &str) -> String {
    match ty {
        PgType::Json => format!("t.{}::text = {other}::text", quote_ident(column)),
        _ => format!("t.{} = {other}", quote_ident(column)),
    }
}

/// Reads chosen columns of a table's rows by key, many keys per statement.
#[derive(Debug, Clone)]
pub struct Lookup {
    sql: String,
    table: String,
    key_len: usize,
    /// The tenant, bound after the key arrays in a shared table.
    tenant: Option<String>,
}

impl Lookup {
    /// Reads `columns` (as text when `as_text`, else in binary) of `schema.table`'s `rows`,
    /// whose key columns are `keys` (target name and type).
    pub fn new(
        schema: &str,
        table: &str,
        keys: &[(&str, &PgType)],
        columns: &[String],
        as_text: bool,
        rows: &Rows,
    ) -> Lookup {
        let arrays: Vec<String> = std::iter::once("$1::bigint[]".to_string())
            .chain(
                keys.iter()
                    .enumerate()
                    .map(|(j, (_, ty))| format!("${}::{}[]", j + 2, ty.sql())),
            )
            .collect();
        let aliases: Vec<String> = std::iter::once("n".to_string())
            .chain((1..=keys.len()).map(|j| format!("a{j}")))
            .collect();
        let on: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(j, (c, ty))| key_equal(c, ty, &format!("k.a{}", j + 1)))
            .collect();
        let select: Vec<String> = columns
            .iter()
            .map(|c| {
                if as_text {
                    format!("t.{}::text", quote_ident(c))
                } else {
                    format!("t.{}", quote_ident(c))
                }
            })
            .collect();
        Lookup {
            sql: format!(
                "SELECT k.n{}{} FROM unnest({}) AS k({}) JOIN {} t ON {}{}",
                if select.is_empty() { "" } else { ", " },
                select.join(", "),
                arrays.join(", "),
                aliases.join(", "),
                qualified(schema, table),
                on.join(" AND "),
                rows.and("t", keys.len() + 2)
            ),
            table: table.to_string(),
            key_len: keys.len(),
            tenant: match rows {
                Rows::All => None,
                Rows::Tenant { tenant, .. } => Some(tenant.clone()),
            },
        }
    }

    /// The row of each key (`keys[i]` holds one encoded value per key column), `None` where
    /// the table has none. A key value that is NULL finds no row.
    pub async fn rows(
        &self,
        client: &impl GenericClient,
        keys: &[Vec<Option<Vec<u8>>>],
    ) -> Result<Vec<Option<Vec<Raw>>>> {
        let ordinals = EncodedArray(
            (0..keys.len() as i64)
                .map(|n| Some(n.to_be_bytes().to_vec()))
                .collect(),
        );
        let columns: Vec<EncodedArray> = (0..self.key_len)
            .map(|j| EncodedArray(keys.iter().map(|k| k.get(j).cloned().flatten()).collect()))
            .collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = std::iter::once(&ordinals)
            .chain(columns.iter())
            .map(|a| a as &(dyn ToSql + Sync))
            .collect();
        if let Some(t) = &self.tenant {
            params.push(t);
        }
        let rows = client.query(&self.sql, &params).await.map_err(|e| {
            Error::from_pg(
                format!("cannot read rows of table {} by key", self.table),
                e,
            )
        })?;
        let mut found: HashMap<i64, Vec<Raw>> = HashMap::with_capacity(rows.len());
        for r in rows {
            let n: i64 = r.get(0);
            found.insert(n, (1..r.len()).map(|i| r.get::<_, Raw>(i)).collect());
        }
        Ok((0..keys.len() as i64).map(|n| found.remove(&n)).collect())
    }
}
