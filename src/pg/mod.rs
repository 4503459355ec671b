//! The Postgres side: connecting, reading an existing schema, DDL, binary COPY and our state.

pub mod apply;
pub mod catalog;
pub mod convert;
pub mod copy;
pub mod ddl;
pub mod decode;
pub mod foreign_keys;
pub mod lookup;
pub mod reverse;
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

/// The most Postgres connections this process holds at once, when it is a fleet's daemon:
/// each connection holds a permit for as long as it is open, and a connect waits for one.
/// Waiting is first come, first served.
#[derive(Debug)]
pub struct Limit {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    size: usize,
    waiting: std::sync::atomic::AtomicUsize,
    contended: tokio::sync::Notify,
}

static LIMIT: std::sync::OnceLock<Limit> = std::sync::OnceLock::new();

impl Limit {
    /// Bounds every connection this process makes from now on to `size` (once per process).
    pub fn install(size: usize) -> &'static Limit {
        LIMIT.get_or_init(|| Limit {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(size.max(1))),
            size: size.max(1),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            contended: tokio::sync::Notify::new(),
        })
    }

    /// The process' limit, if it has one.
    pub fn get() -> Option<&'static Limit> {
        LIMIT.get()
    }

    /// How many connections it allows.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many connects wait for a permit right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many connections are open now.
    pub fn in_use(&self) -> usize {
        self.size - self.permits.available_permits()
    }

    /// Resolves when a connect starts waiting for a permit: a holder with nothing to do
    /// lets its connection go.
    pub async fn contended(&self) {
        if self.waiting() > 0 {
            return;
        }
        self.contended.notified().await;
    }

    async fn acquire(&self) -> tokio::sync::OwnedSemaphorePermit {
        use std::sync::atomic::Ordering;
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return p;
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.contended.notify_waiters();
        let permit = self.permits.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        // The semaphore is never closed.
        permit.unwrap_or_else(|_| unreachable!("the connection limit's semaphore is never closed"))
    }
}

/// Connects to the target, over TLS as its `sslmode` says (see [`tls`]); the connection's
/// background task is spawned on the current runtime.
pub async fn connect(url: &TargetUrl) -> Result<Client> {
    Ok(open(url, false).await?.0)
}

/// Connects like [`connect`], and forwards the payload of each notification (LISTEN) the
/// server sends on this connection to the receiver; it closes when the connection ends.
pub async fn connect_listening(
    url: &TargetUrl,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<String>)> {
    let (client, rx) = open(url, true).await?;
    let rx = rx.ok_or_else(|| Error::new(ErrorKind::Target, "no notification channel"))?;
    Ok((client, rx))
}

async fn open(url: &TargetUrl, listen: bool) -> Result<Opened> {
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
        let permit = match Limit::get() {
            Some(limit) => Some(limit.acquire().await),
            None => None,
        };
        let opened = match &connector {
            None => {
                let attempt = attempt(url, tls.mode, NoTls, target, &config, listen, permit);
                tokio::time::timeout(deadline, attempt).await
            }
            Some(make) => {
                let connect =
                    tokio_postgres::tls::MakeTlsConnect::<socket::Socket>::make_tls_connect(
                        &mut make.clone(),
                        target.hostname.as_deref().unwrap_or(""),
                    )
                    .map_err(|never| match never {})?;
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
    let sent = match conninfo::split(url.expose_secret()).and_then(|(_, t)| t.connector()) {
        Ok(None) => token.cancel_query(NoTls).await,
        Ok(Some(tls)) => token.cancel_query(tls).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot cancel the statement in flight");
            return;
        }
    };
    if let Err(e) = sent {
        tracing::warn!(error = %crate::conninfo::redact_in_text(&e.to_string()), "cannot cancel the statement in flight");
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
