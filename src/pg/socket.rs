//! The socket under a Postgres connection, opened the way tokio-postgres opens its own (each
//! host and address in turn, `hostaddr`, `connect_timeout`, keepalives, `tcp_user_timeout`,
//! `load_balance_hosts`), for the one thing that one does not do: a close that ends only once
//! the server's backend has exited.
//!
//! A fleet's connection limit counts what the server counts, backends. A closed socket is not
//! a gone backend: the backend still reads the Terminate, drops the session's temp tables and
//! releases its locks, listed in `pg_stat_activity` all the while, and a permit freed at once
//! opened the next connection beside it (a pool of 3 was seen as 9). PostgreSQL keeps the
//! socket open until the backend process is gone, so that a client can close synchronously
//! ("wait till the transport layer reports connection closure", `socket_close` in pqcomm.c):
//! after its FIN, [`Socket`] reads to the end.

use std::hash::BuildHasher;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::{Host, LoadBalanceHosts};

/// How long a close waits for the server's backend to exit. A backend that takes longer is
/// stuck (or the network is gone): the permit is let go rather than held forever.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// A connection's socket, TCP or Unix, whose shutdown waits for the server to close its end.
#[derive(Debug)]
pub struct Socket {
    io: Io,
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
}

#[derive(Debug)]
enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// One place to connect to: the address, the port, and the name TLS checks the server's
/// certificate against.
#[derive(Debug)]
pub struct Target {
    host: Host,
    port: u16,
    /// The `host` as written, for TLS (none for a Unix socket or a bare `hostaddr`).
    pub hostname: Option<String>,
}

/// Every place the configuration names, in the order to try them: libpq's rules for `host`,
/// `hostaddr` and `port`, shuffled under `load_balance_hosts=random`.
pub fn targets(config: &tokio_postgres::Config) -> Result<Vec<Target>, String> {
    let (hosts, addrs, ports) = (
        config.get_hosts(),
        config.get_hostaddrs(),
        config.get_ports(),
    );
    if hosts.is_empty() && addrs.is_empty() {
        return Err("it names no host (host= or hostaddr=)".into());
    }
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(format!(
            "it names {} hosts and {} hostaddrs: give one hostaddr per host",
            hosts.len(),
            addrs.len()
        ));
    }
    let n = hosts.len().max(addrs.len());
    if ports.len() > 1 && ports.len() != n {
        return Err(format!(
            "it names {} ports for {n} hosts: give one port, or one per host",
            ports.len()
        ));
    }
    let mut order: Vec<usize> = (0..n).collect();
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        // RandomState is seeded from the OS: enough to spread clients over the hosts.
        let seed = std::collections::hash_map::RandomState::new();
        order.sort_by_key(|i| seed.hash_one(i));
    }
    Ok(order
        .into_iter()
        .filter_map(|i| {
            let hostname = match hosts.get(i) {
                Some(Host::Tcp(h)) => Some(h.clone()),
                _ => None,
            };
            // hostaddr, where given, is where to connect; host stays the name TLS checks.
            let host = addrs
                .get(i)
                .map(|ip| Host::Tcp(ip.to_string()))
                .or_else(|| hosts.get(i).cloned())?;
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            Some(Target {
                host,
                port,
                hostname,
            })
        })
        .collect())
}

impl Target {
    /// Opens a socket to this place, trying each address a host name resolves to.
    pub async fn connect(&self, config: &tokio_postgres::Config) -> io::Result<Socket> {
        let timeout = config.get_connect_timeout().copied();
        let io = match &self.host {
            Host::Tcp(name) => {
                let mut last = None;
                let mut found = None;
                for addr in tokio::net::lookup_host((name.as_str(), self.port)).await? {
                    match within(timeout, TcpStream::connect(addr)).await {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let stream = match (found, last) {
                    (Some(s), _) => s,
                    (None, Some(e)) => return Err(e),
                    (None, None) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("{name} resolves to no address"),
                        ));
                    }
                };
                stream.set_nodelay(true)?;
                let sock = socket2::SockRef::from(&stream);
                if let Some(t) = config.get_tcp_user_timeout() {
                    sock.set_tcp_user_timeout(Some(*t))?;
                }
                if config.get_keepalives() {
                    let mut k =
                        socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
                    if let Some(i) = config.get_keepalives_interval() {
                        k = k.with_interval(i);
                    }
                    if let Some(r) = config.get_keepalives_retries() {
                        k = k.with_retries(r);
                    }
                    sock.set_tcp_keepalive(&k)?;
                }
                Io::Tcp(stream)
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", self.port));
                Io::Unix(within(timeout, UnixStream::connect(path)).await?)
            }
        };
        Ok(Socket { io, closing: None })
    }
}

async fn within<T>(
    timeout: Option<Duration>,
    connect: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match timeout {
        None => connect.await,
        Some(t) => tokio::time::timeout(t, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))?,
    }
}

impl Io {
    fn pinned(&mut self) -> Pin<&mut (dyn AsyncReadWrite + Unpin)> {
        match self {
            Io::Tcp(s) => Pin::new(s as &mut (dyn AsyncReadWrite + Unpin)),
            Io::Unix(s) => Pin::new(s as &mut (dyn AsyncReadWrite + Unpin)),
        }
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> AsyncReadWrite for T {}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().io.pinned().poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io.pinned().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io.pinned().poll_flush(cx)
    }

    /// Sends our FIN, then reads (and drops) whatever comes until the server closes its end:
    /// its backend has exited then.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closing.is_none() {
            ready!(this.io.pinned().poll_shutdown(cx))?;
            this.closing = Some(Box::pin(tokio::time::sleep(CLOSE_WAIT)));
        }
        let mut scratch = [0u8; 512];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match this.io.pinned().poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                // A TLS close_notify, or what else was in flight: not ours to read any more.
                Poll::Ready(Ok(())) => continue,
                // A reset closes too.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        match this.closing.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                tracing::warn!(
                    "a Postgres backend did not exit within {} s of its connection's close; its connection slot is counted free",
                    CLOSE_WAIT.as_secs()
                );
                Poll::Ready(Ok(()))
            }
            _ => Poll::Pending,
        }
    }
}
