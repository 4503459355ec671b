//! The Postgres side: connecting, reading an existing schema, DDL, binary COPY and our state.

pub mod apply;
pub mod catalog;
pub mod convert;
pub mod copy;
pub mod ddl;
pub mod foreign_keys;
pub mod scan;
pub mod sequences;
pub mod state;

use std::str::FromStr;

use tokio_postgres::{Client, NoTls};

use crate::config::TargetUrl;
use crate::error::{Error, ErrorKind, Result};

pub use crate::sqlite::quote_ident;

/// `"schema"."table"`, both quoted.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// Connects to the target; the connection's background task is spawned on the current runtime.
pub async fn connect(url: &TargetUrl) -> Result<Client> {
    let mut config = tokio_postgres::Config::from_str(url.expose_secret()).map_err(|e| {
        Error::with_source(
            ErrorKind::Config,
            format!(
                "the Postgres target {} is not a valid connection string",
                url.redacted()
            ),
            e,
        )
    })?;
    if config.get_application_name().is_none() {
        config.application_name("sqlite2pg");
    }
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        Error::from_pg(
            format!("cannot connect to Postgres at {}", url.redacted()),
            e,
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "Postgres connection ended");
        }
    });
    Ok(client)
}
