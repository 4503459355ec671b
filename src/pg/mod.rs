//! The Postgres side: connecting, reading an existing schema, DDL, binary COPY and our state.

pub mod apply;
pub mod catalog;
pub mod convert;
pub mod copy;
pub mod ddl;
pub mod decode;
pub mod foreign_keys;
pub mod lookup;
pub mod pipeline;
pub mod pool;
pub mod reverse;
pub mod rows;
pub mod scan;
pub mod sequences;
pub mod socket;
pub mod state;
pub mod tls;

use std::str::FromStr;

use tokio_postgres::{Client, NoTls};

use crate::conninfo;
use crate::conninfo::TargetUrl;
use crate::error::{Error, ErrorKind, Result};

pub use crate::model::quote_ident;
pub use pool::Limit;
pub use rows::Rows;

/// `"schema"."table"`, both quoted.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// The PostgreSQL majors the test suite runs on (Debian's 15 and those in tests/pg-versions):
/// every SQL text sqlite2pg sends is one the oldest accepts.
pub const TESTED_MAJORS: [i32; 3] = [15, 16, 18];

/// The server's `server_version_num` (e.g. 160002) and `server_version` (e.g. `16.2`).
pub async fn server_version(client: &Client) -> Result<(i32, String)> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(|e| Error::from_pg("cannot read the server's version", e))?;
    Ok((row.get(0), row.get(1)))
}

/// Connects to the target, over TLS as its `sslmode` says (see [`tls`]); the connection's
/// background task is spawned on the current runtime.
pub async fn connect(url: &TargetUrl) -> Result<Client> {
    Ok(open(url, false, None).await?.0)
}

/// Connects like [`connect`] on a permit of the fleet's limit already held.
async fn open_with(url: &TargetUrl, permit: tokio::sync::OwnedSemaphorePermit) -> Result<Client> {
    Ok(open(url, false, Some(permit)).await?.0)
}

/// Connects like [`connect`], and forwards the payload of each notification (LISTEN) the
/// server sends on this connection to the receiver; it closes when the connection ends.
pub async fn connect_listening(
    url: &TargetUrl,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<String>)> {
    let (client, rx) = open(url, true, None).await?;
    let rx = rx.ok_or_else(|| Error::new(ErrorKind::Target, "no notification channel"))?;
    Ok((client, rx))
}

async fn open(
    url: &TargetUrl,
    listen: bool,
    mut permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Opened> {
    let (config, tls) = settings(url)?;
    let connector = tls.connector()?;
    let targets = socket::targets(&config).map_err(|why| {
        Error::new(
            ErrorKind::Config,
            format!(
                "the Postgres target {} cannot be connected to: {why}",
                url.redacted()
            ),
        )
    })?;
    // tokio-postgres bounds only the TCP connect; a server that accepts and then never
    // answers (hung, stopped, a proxy with nothing behind it) would hold every command, and
    // the daemon's reconnect loop, forever. Each host's whole connect gets a deadline.
    let deadline = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let mut failed = None;
    for target in &targets {
        // Held by the connection's task: the permit goes back when the connection closes.
        let permit = match (permit.take(), Limit::get()) {
            (Some(p), _) => Some(p),
            (None, Some(limit)) => Some(limit.acquire().await),
            (None, None) => None,
        };
        let opened = match &connector {
            None => {
                let attempt = attempt(url, tls.mode, NoTls, target, &config, listen, permit);
                tokio::time::timeout(deadline, attempt).await
            }
            Some(make) => {
                let connect = tls_for(make, target);
                let attempt = attempt(url, tls.mode, connect, target, &config, listen, permit);
                tokio::time::timeout(deadline, attempt).await
            }
        };
        match opened {
            Ok(Ok(opened)) => return Ok(opened),
            Ok(Err(e)) => failed = Some(e),
            Err(_) => {
                failed = Some(Error::new(
                    ErrorKind::TargetUnreachable,
                    format!(
                        "cannot connect to Postgres at {}: no answer within {} s (raise connect_timeout in the URL if the server is just slow)",
                        url.redacted(),
                        deadline.as_secs_f64()
                    ),
                ))
            }
        }
    }
    Err(failed.unwrap_or_else(|| Error::new(ErrorKind::Config, "no host to connect to")))
}

/// The target's connection settings for tokio-postgres, and its TLS settings.
fn settings(url: &TargetUrl) -> Result<(tokio_postgres::Config, conninfo::TlsSettings)> {
    let invalid = |e: Error| {
        Error::new(
            ErrorKind::Config,
            format!(
                "the Postgres target {} is not a valid connection string: {e}",
                url.redacted()
            ),
        )
    };
    let (conn, tls) = conninfo::split(url.expose_secret()).map_err(invalid)?;
    let mut config = tokio_postgres::Config::from_str(&conn).map_err(|e| {
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
    config.ssl_mode(tls.mode.negotiation());
    Ok((config, tls))
}

type MakeTls = tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS handshake for one host, checked against the host's name.
fn tls_for(
    make: &MakeTls,
    target: &socket::Target,
) -> <MakeTls as tokio_postgres::tls::MakeTlsConnect<socket::Socket>>::TlsConnect {
    let name = target.hostname.as_deref().unwrap_or("");
    match tokio_postgres::tls::MakeTlsConnect::<socket::Socket>::make_tls_connect(
        &mut make.clone(),
        name,
    ) {
        Ok(connect) => connect,
        Err(never) => match never {},
    }
}

/// A connection, and the receiver of its notifications when it listens.
type Opened = (Client, Option<tokio::sync::mpsc::UnboundedReceiver<String>>);

/// Connects to one host of the target: the socket, the startup (TLS, authentication), the
/// session attributes the URL asks for, and the session's settings.
async fn attempt<T>(
    url: &TargetUrl,
    mode: conninfo::SslMode,
    tls: T,
    target: &socket::Target,
    config: &tokio_postgres::Config,
    listen: bool,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Opened>
where
    T: tokio_postgres::tls::TlsConnect<socket::Socket>,
    T::Stream: Send + 'static,
{
    let what = || format!("cannot connect to Postgres at {}", url.redacted());
    let socket = target
        .connect(config)
        .await
        .map_err(|e| Error::with_source(ErrorKind::TargetUnreachable, what(), e))?;
    let (client, connection) = config
        .connect_raw(socket, tls)
        .await
        .map_err(|e| connect_error(url, mode, e))?;
    let rx = drive(connection, listen, permit);
    let wanted = match config.get_target_session_attrs() {
        tokio_postgres::config::TargetSessionAttrs::ReadWrite => Some("off"),
        tokio_postgres::config::TargetSessionAttrs::ReadOnly => Some("on"),
        _ => None,
    };
    if let Some(wanted) = wanted {
        let rows = client
            .simple_query("SHOW transaction_read_only")
            .await
            .map_err(|e| Error::from_pg(what(), e))?;
        let read_only = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        if read_only.as_deref() != Some(wanted) {
            return Err(Error::new(
                ErrorKind::TargetUnreachable,
                format!(
                    "{}: this host is {} (transaction_read_only={}), and target_session_attrs asks for the other kind",
                    what(),
                    if wanted == "off" {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    read_only.as_deref().unwrap_or("unknown"),
                ),
            ));
        }
    }
    // Marks the session as sqlite2pg's: the reverse capture (installed before the cutover's
    // fence, while the forward stream still writes) records only the app's writes.
    client
        .batch_execute(&format!("SET {ORIGIN_SETTING} = 'sqlite'"))
        .await
        .map_err(|e| Error::from_pg("cannot set up the Postgres session", e))?;
    Ok((client, rx))
}

/// The session setting that tells the reverse capture a write comes from sqlite2pg.
const ORIGIN_SETTING: &str = "sqlite2pg.origin";

/// Runs a connection on the runtime; with `listen`, its notifications go to the receiver.
fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    listen: bool,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if !listen {
        spawn_connection(connection, permit);
        return None;
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _permit = permit;
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "Postgres connection ended");
                    break;
                }
                None => break,
            }
        }
    });
    Some(rx)
}

/// How long a connect may take when the URL sets no `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks Postgres to stop the statement a client runs now (with the target's TLS settings;
/// a cancel request skips authentication). Best effort: the statement's transaction rolls
/// back either way once its connection closes.
pub async fn cancel(token: tokio_postgres::CancelToken, url: &TargetUrl) {
    if let Err(e) = send_cancel(&token, url).await {
        tracing::warn!(error = %e, "cannot cancel the statement in flight");
    }
}

/// Sends the cancel request to every host the target names: the one the session is on
/// stops its statement, and the others know no such session and drop the request.
async fn send_cancel(token: &tokio_postgres::CancelToken, url: &TargetUrl) -> Result<()> {
    let (config, tls) = settings(url)?;
    let connector = tls.connector()?;
    let targets = socket::targets(&config).map_err(|why| Error::new(ErrorKind::Config, why))?;
    let mut sent = false;
    let mut failed = None;
    for target in &targets {
        let socket = match target.connect(&config).await {
            Ok(s) => s,
            Err(e) => {
                failed = Some(e.to_string());
                continue;
            }
        };
        let result = match &connector {
            None => token.cancel_query_raw(socket, NoTls).await,
            Some(make) => token.cancel_query_raw(socket, tls_for(make, target)).await,
        };
        match result {
            Ok(()) => sent = true,
            Err(e) => failed = Some(crate::conninfo::redact_in_text(&e.to_string())),
        }
    }
    match (sent, failed) {
        (false, Some(why)) => Err(Error::new(
            ErrorKind::TargetUnreachable,
            format!(
                "cannot reach Postgres at {} to cancel: {why}",
                url.redacted()
            ),
        )),
        _ => Ok(()),
    }
}

fn spawn_connection<F>(connection: F, permit: Option<tokio::sync::OwnedSemaphorePermit>)
where
    F: std::future::Future<Output = std::result::Result<(), tokio_postgres::Error>>
        + Send
        + 'static,
{
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "Postgres connection ended");
        }
    });
}

/// A failed connection. A TLS failure (no TLS on the server, a certificate that does not
/// check out) is no outage: retrying cannot fix it, so it needs a person, with what to check.
fn connect_error(url: &TargetUrl, mode: conninfo::SslMode, e: tokio_postgres::Error) -> Error {
    let what = format!("cannot connect to Postgres at {}", url.redacted());
    let text = crate::error::chain_text(&e);
    // Only what a retry cannot change: a certificate refused, or no TLS on the server. A
    // handshake cut short (a restart) is an outage like any other.
    if e.code().is_none()
        && (text.contains("certificate")
            || text.contains("does not support TLS")
            || text.contains("HandshakeFailure"))
    {
        return Error::new(
            ErrorKind::Config,
            format!(
                "{what} over TLS (sslmode={}): {}. Check sslmode and sslrootcert (the CA that signed the server's certificate, or `system`); a server without TLS needs sslmode=prefer or disable",
                mode.name(),
                crate::conninfo::redact_in_text(&text)
            ),
        );
    }
    Error::from_pg(what, e)
}

#[cfg(test)]
mod tests {
    /// TESTED_MAJORS is what the suite runs on: Debian's 15 and tests/pg-versions.
    #[test]
    fn the_tested_majors_are_those_the_suite_runs_on() {
        let mut majors: Vec<i32> = include_str!("../../tests/pg-versions")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        majors.push(15);
        majors.sort();
        assert_eq!(majors, super::TESTED_MAJORS);
    }
}
