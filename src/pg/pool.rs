//! A fleet daemon's Postgres connections: at most `--max-connections` open at once (counted
//! as the server counts them, see [`super::socket`]), and sessions handed from tenant to
//! tenant rather than closed and opened again.
//!
//! A tenant woken by one write used to open a connection for it: TCP, SCRAM, a backend forked
//! with cold caches, the staging tables made again. At 500 writes a second over 1,000 tenants
//! that was the whole lag. A tenant that lets its connection go now gives the session back
//! (its advisory locks and LISTENs released; the staging tables, named by shape, stay), and
//! the tenant that has waited longest takes it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;

use super::apply::Staging;
use crate::conninfo::TargetUrl;
use crate::error::Result;

/// A connection of a tenant's stream, with what this process made in it that outlives a
/// tenant's turn: the apply's staging tables and the statements that fill them.
#[derive(Debug)]
pub struct Session {
    client: Client,
    staging: Staging,
}

impl Session {
    /// A connection nothing was made in yet.
    pub fn new(client: Client) -> Session {
        Session {
            client,
            staging: Staging::default(),
        }
    }

    /// The connection, and what the apply made in it.
    pub fn parts(&mut self) -> (&Client, &mut Staging) {
        (&self.client, &mut self.staging)
    }
}

impl std::ops::Deref for Session {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Session {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// A session given back and not taken again for this long is closed: an idle fleet holds no
/// backend.
const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// What a session given back must shed before another tenant may use it: the run lock (and
/// any other advisory lock of the session) and a LISTEN. Its settings are sqlite2pg's own
/// and the same for every tenant (the origin marker, `synchronous_commit`), so they stay, and
/// so do the apply's staging tables: they are named by their shape (`pg::apply`), so another
/// tenant uses only those that fit its tables, and making them again at every hand-off was
/// most of the server's work in one (`bench/fleet-profile`).
const RESET: &str = "SELECT pg_advisory_unlock_all(); UNLISTEN *";

/// [`RESET`], and how many temp tables the session holds: asked at one hand-off in
/// [`COUNT_EVERY`], since it reads all of `pg_class` (0.16 ms at 200 tenants, the most
/// expensive statement of a hand-off when asked at each).
const RESET_AND_COUNT: &str = "SELECT pg_advisory_unlock_all(); UNLISTEN *; \
    SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()";
const COUNT_EVERY: u64 = 16;

/// A session found holding more temp tables than this drops them all: tenants of many
/// shapes would otherwise pile them up in the catalog and in the backend's caches.
const TEMP_TABLES_KEPT: i64 = 64;

/// The most Postgres connections this process holds at once, when it is a fleet's daemon:
/// each connection holds a permit for as long as it is open (until its backend has exited),
/// and a connect waits for one. Waiting is first come, first served.
#[derive(Debug)]
pub struct Limit {
    permits: std::sync::Arc<Semaphore>,
    size: usize,
    waiting: AtomicUsize,
    contended: Notify,
    /// Sessions given back, the oldest first.
    idle: Mutex<Vec<Idle>>,
    /// Told when a session is given back and kept: a connect waiting for a permit closes it.
    returned: Notify,
    /// Tenants waiting for a session, the longest first.
    queue: Mutex<VecDeque<Waiter>>,
    /// Sessions given back so far.
    given_back: AtomicU64,
}

/// A connect counted as waiting while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A tenant waiting for a session to a target.
type Waiter = (TargetUrl, tokio::sync::oneshot::Sender<Session>);

#[derive(Debug)]
struct Idle {
    client: Session,
    url: TargetUrl,
    since: Instant,
}

static LIMIT: std::sync::OnceLock<Limit> = std::sync::OnceLock::new();

impl Limit {
    /// Bounds every connection this process makes from now on to `size` (once per process).
    pub fn install(size: usize) -> &'static Limit {
        LIMIT.get_or_init(|| Limit::new(size))
    }

    fn new(size: usize) -> Limit {
        Limit {
            permits: std::sync::Arc::new(Semaphore::new(size.max(1))),
            size: size.max(1),
            waiting: AtomicUsize::new(0),
            contended: Notify::new(),
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
            queue: Mutex::new(VecDeque::new()),
            given_back: AtomicU64::new(0),
        }
    }

    /// A pool of its own, not the process' (a unit test's).
    #[cfg(test)]
    pub(crate) fn of_test(size: usize) -> &'static Limit {
        Box::leak(Box::new(Limit::new(size)))
    }

    /// Counts as a connect waiting until the guard drops (a unit test's contention).
    #[cfg(test)]
    pub(crate) fn waiting_for_test(&self) -> impl Sized + '_ {
        self.wait()
    }

    /// The process' limit, if it has one.
    pub fn get() -> Option<&'static Limit> {
        LIMIT.get()
    }

    /// How many connects wait for a permit or a session right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// How many connections are open now, and how many of them are idle sessions.
    pub fn in_use(&self) -> (usize, usize) {
        let open = self.size - self.permits.available_permits();
        (open, self.idle().len())
    }

    /// Resolves when a connect starts waiting: a holder with nothing to do gives its
    /// session back.
    pub async fn contended(&self) {
        if self.waiting() > 0 {
            return;
        }
        self.contended.notified().await;
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding the lock leaves a list still whole: take it.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle session to `url` still open, if one is.
    fn take_idle(&self, url: &TargetUrl) -> Option<Session> {
        let mut idle = self.idle();
        // The newest first: the warmest, and the oldest are left to expire.
        while let Some(i) = idle.iter().rposition(|s| &s.url == url) {
            let s = idle.remove(i);
            if !s.client.is_closed() {
                return Some(s.client);
            }
        }
        None
    }

    /// A permit for a new connection. With none free, an idle session is closed for it
    /// (one given back while this waits, too).
    pub(super) async fn acquire(&self) -> OwnedSemaphorePermit {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return p;
        }
        let _waiting = self.wait();
        let permit = loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            let oldest = {
                let mut idle = self.idle();
                (!idle.is_empty()).then(|| idle.remove(0))
            };
            // Its permit comes back once its backend has exited.
            drop(oldest);
            tokio::select! {
                p = self.permits.clone().acquire_owned() => break p,
                _ = returned => {}
            }
        };
        permit.unwrap_or_else(|_| unreachable!("the connection limit's semaphore is never closed"))
    }

    /// Counts a connect as waiting (and says so to the holders) until the guard drops, also
    /// when the connect is given up (its tenant stopped): a count left behind would have
    /// every tenant let its session go after each drain.
    fn wait(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.contended.notify_waiters();
        Waiting(&self.waiting)
    }

    /// A session for a tenant: one given back by another tenant if there is one, else a new
    /// connection, else the first of the two to come. A session given back goes to the
    /// tenant that has waited longest, not to whoever asks next.
    async fn session(&self, url: &TargetUrl) -> Result<Session> {
        let asked = Instant::now();
        let got = self.session_now(url).await;
        crate::metrics::fleet_session_wait(asked.elapsed().as_secs_f64());
        got
    }

    /// [`Limit::session`], unmeasured.
    async fn session_now(&self, url: &TargetUrl) -> Result<Session> {
        if let Some(c) = self.take_idle(url) {
            return Ok(c);
        }
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return super::open_with(url, p).await.map(Session::new);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue().push_back((url.clone(), tx));
        let waiting = self.wait();
        let got = tokio::select! {
            biased;
            c = rx => Ok(c),
            p = self.permits.clone().acquire_owned() => Err(p),
        };
        drop(waiting);
        match got {
            Ok(Ok(client)) => Ok(client),
            // The sender went away without a session: cannot be, the queue keeps it until
            // it sends; a permit serves as well.
            Ok(Err(_)) => super::open_with(url, self.acquire().await)
                .await
                .map(Session::new),
            Err(p) => {
                let p = p.unwrap_or_else(|_| {
                    unreachable!("the connection limit's semaphore is never closed")
                });
                super::open_with(url, p).await.map(Session::new)
            }
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiter>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a session given back: reset, to the tenant that waited longest, or kept for the
    /// next; closed if it cannot be reset.
    async fn give_back(&self, mut client: Session, url: TargetUrl) {
        if client.is_closed() {
            return;
        }
        let count = self
            .given_back
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(COUNT_EVERY);
        if count {
            match reset_counting(&client).await {
                Reset::Failed => return,
                Reset::Dropped => client.staging.forget(),
                Reset::Kept => {}
            }
        } else {
            // Written, not awaited: whatever the next holder sends follows it on the
            // connection, and the server answers in order. A session is only given back
            // between transactions, so the reset can only fail with the connection, and
            // the next holder's own statements then say so. Awaited, it was one round trip
            // of every hand-off, the session of no use meanwhile.
            drop(super::pipeline::send(Box::pin(client.batch_execute(RESET))));
        }
        loop {
            let next = {
                let mut queue = self.queue();
                let i = queue.iter().position(|(u, _)| *u == url);
                i.and_then(|i| queue.remove(i))
            };
            let Some((_, tx)) = next else { break };
            // A waiter that got a permit meanwhile has gone: the next one.
            match tx.send(client) {
                Ok(()) => return,
                Err(back) => client = back,
            }
        }
        let mut idle = self.idle();
        let now = Instant::now();
        // Sessions nobody took for a while are closed here, and by [`Limit::close_idle`].
        idle.retain(|s| now.duration_since(s.since) < IDLE_CLOSE);
        idle.push(Idle {
            client,
            url,
            since: now,
        });
        drop(idle);
        // A connect waiting for a permit closes it.
        self.returned.notify_one();
    }

    /// Closes the sessions given back and not taken again for a while.
    pub fn close_idle(&self) {
        let now = Instant::now();
        self.idle()
            .retain(|s| now.duration_since(s.since) < IDLE_CLOSE);
    }
}

/// What [`reset_counting`] did.
enum Reset {
    /// The session is reset and keeps its temp tables.
    Kept,
    /// The session is reset and its temp tables are dropped.
    Dropped,
    /// It cannot be reset: closed.
    Failed,
}

/// Resets a session given back (see [`RESET`]) and counts its temp tables, dropping them all
/// when it holds too many.
async fn reset_counting(client: &Client) -> Reset {
    let Ok(messages) = client.simple_query(RESET_AND_COUNT).await else {
        return Reset::Failed;
    };
    let temp_tables = messages.iter().rev().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse::<i64>().ok(),
        _ => None,
    });
    match temp_tables {
        Some(n) if n <= TEMP_TABLES_KEPT => Reset::Kept,
        _ => match client.batch_execute("DISCARD TEMP").await {
            Ok(()) => Reset::Dropped,
            Err(_) => Reset::Failed,
        },
    }
}

/// A session for one tenant's stream: in a fleet's daemon, one another tenant gave back if
/// any ([`give_back`]); elsewhere a new connection.
pub async fn session(url: &TargetUrl) -> Result<Session> {
    match Limit::get() {
        Some(limit) => limit.session(url).await,
        None => super::connect(url).await.map(Session::new),
    }
}

/// Gives a tenant's session back for another tenant, in a fleet's daemon; elsewhere closes
/// it. Only a session between transactions may be given back (one in the middle of one, or
/// broken, is closed instead).
pub async fn give_back(client: Session, url: &TargetUrl) {
    if let Some(limit) = Limit::get() {
        limit.give_back(client, url.clone()).await;
    }
}
