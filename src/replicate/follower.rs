//! The follower: what both streams are, whichever way they go. A [`Direction`] knows how to
//! connect, apply one batch and look around once caught up (the forward stream: SQLite's
//! changelog into Postgres; the reverse stream: Postgres' into SQLite); the follower alone
//! decides when each runs, how long to wait, and what an error means:
//! - a stop ends the stream at once, between batches;
//! - an error the kind calls transient ([`RetryPolicy::RetryLater`]) drops the connection and
//!   tries again after a capped backoff (an unreachable Postgres is waited out, for at most
//!   `give_up_after` in a switch's own drain), nothing lost: a batch that failed rolled back;
//! - any other error ends the stream, the position kept.

use std::time::{Duration, Instant};

use super::Until;
use crate::error::{Error, ErrorKind, Result, RetryPolicy};
use crate::shutdown::{Backoff, Shutdown};

/// What one batch did.
pub(crate) enum Applied<E> {
    /// It applied a batch; more may be pending.
    Batch,
    /// Nothing was pending.
    Nothing,
    /// A stop came during the batch, which rolled back.
    Stopped,
    /// The direction ends (a schema change to re-plan, the switch it served).
    End(E),
}

/// Whether a connection was made.
pub(crate) enum Connected {
    /// Connected, holding the run lock.
    Ready,
    /// Connected, but another session holds the run lock.
    LockHeld,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended<E> {
    /// A stop was asked for.
    Stopped,
    /// Nothing left to apply (with `Until::CaughtUp`).
    CaughtUp,
    /// The direction's own end.
    By(E),
}

/// One direction of replication, as the follower drives it.
pub(crate) trait Direction {
    /// How this direction ends by itself.
    type End;
    /// Connects to Postgres (again) and takes the run lock.
    async fn connect(&mut self) -> Result<Connected>;
    /// Forgets the connection after a failure; the next `connect` makes a new one.
    fn disconnect(&mut self);
    /// Lets the connection go between batches, when the fleet's other tenants want one: a
    /// session still good, given back for them ([`crate::pg::pool::give_back`]).
    async fn release(&mut self);
    /// Applies one batch.
    async fn apply(&mut self, stop: &Shutdown) -> Result<Applied<Self::End>>;
    /// Once caught up: housekeeping (pruning, lag), and whether the switch this direction
    /// serves was recorded.
    async fn idle(&mut self) -> Result<Option<Self::End>>;
    /// Resolves when the source may hold something new (a file notification, a NOTIFY);
    /// pending forever when it cannot tell (the poll interval covers that).
    async fn changed(&mut self);
    /// Without a connection: whether a wake-up may have brought work worth connecting for
    /// (`true` when the direction cannot tell without Postgres).
    fn worth_connecting(&mut self) -> bool {
        true
    }
}

/// A fleet daemon's tenant holds its connection at most this long while others wait for
/// one, then lets it go between batches and queues again (a backlog does not keep the
/// others' lag hostage).
const SLICE: Duration = Duration::from_millis(500);

/// A fleet daemon's tenant without a connection looks at its source this often when no
/// wake-up came (a missed notification): rarely, since idle tenants must cost nothing.
const RELEASED_POLL: Duration = Duration::from_secs(30);

/// A file notification can come while the commit that made it is still being written (the
/// WAL's frames before its index): for a moment after a wake-up, a released tenant that saw
/// nothing new looks again often.
const AFTER_WAKE: Duration = Duration::from_secs(1);
const AFTER_WAKE_POLL: Duration = Duration::from_millis(25);

/// Drives a [`Direction`] until a stop, the end of the changelog (`Until::CaughtUp`) or the
/// direction's own end.
pub(crate) struct Follower {
    until: Until,
    poll_interval: Duration,
    stop: Shutdown,
    /// A fleet's tenant: lets its connection go when idle and another waits for one.
    release: bool,
    backoff: Backoff,
    /// Since when Postgres has been unreachable, while it is.
    down_since: Option<Instant>,
}

impl Follower {
    /// A follower polling every `poll_interval` when nothing wakes it.
    pub(crate) fn new(until: Until, poll_interval: Duration, stop: Shutdown) -> Follower {
        Follower {
            until,
            poll_interval,
            stop,
            release: false,
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(10)),
            down_since: None,
        }
    }

    /// A follower that lets its connection go when idle and someone waits for one, or when
    /// it held it a slice while others wait (a fleet's daemon; not a switch's drain).
    pub(crate) fn releasing(mut self, release: bool) -> Follower {
        self.release = release && self.until == Until::Stopped;
        self
    }

    /// Runs `dir` to its end.
    pub(crate) async fn run<D: Direction>(&mut self, dir: &mut D) -> Result<Ended<D::End>> {
        let mut connected = false;
        let mut said_locked = false;
        // Released: connected again only once a wake-up brings work.
        let mut released = false;
        let mut woken: Option<Instant> = None;
        let mut since = Instant::now();
        loop {
            if self.stop.requested() {
                return Ok(Ended::Stopped);
            }
            if released {
                if dir.worth_connecting() {
                    released = false;
                    woken = None;
                } else {
                    let look = match woken {
                        Some(at) if at.elapsed() < AFTER_WAKE => AFTER_WAKE_POLL,
                        _ => RELEASED_POLL,
                    };
                    tokio::select! {
                        biased;
                        _ = self.stop.wait() => return Ok(Ended::Stopped),
                        _ = dir.changed() => woken = Some(Instant::now()),
                        _ = tokio::time::sleep(look) => {}
                    }
                    continue;
                }
            }
            if !connected {
                match dir.connect().await {
                    Ok(Connected::Ready) => {
                        connected = true;
                        since = Instant::now();
                        self.backoff.reset();
                        if let Some(since) = self.down_since.take() {
                            crate::metrics::reconnected();
                            tracing::info!(
                                down_secs = since.elapsed().as_secs_f64(),
                                "Postgres is reachable again; resuming"
                            );
                        }
                        if std::mem::take(&mut said_locked) {
                            tracing::info!("the run lock is free again; applying");
                        }
                    }
                    Ok(Connected::LockHeld) => {
                        // A switch's own drain does not wait for a daemon: it waits for the
                        // daemon to apply instead.
                        if let Until::CaughtUp { .. } = self.until {
                            return Err(Error::new(
                                ErrorKind::State,
                                "another sqlite2pg daemon is applying on this database; `sqlite2pg status` shows it",
                            ));
                        }
                        if self.release {
                            // Not held while waiting: the pool serves the other tenants.
                            dir.release().await;
                        }
                        if !std::mem::replace(&mut said_locked, true) {
                            tracing::warn!(
                                "another session holds the run lock on this Postgres database (another sqlite2pg daemon, or this one's session from before a network drop): not applying until it is free, so that two never apply side by side. `sqlite2pg status` shows whether a daemon runs"
                            );
                        }
                        if !self.stop.sleep(Duration::from_millis(500)).await {
                            return Ok(Ended::Stopped);
                        }
                    }
                    Err(e) => {
                        if !self.retry(dir, &mut connected, e).await? {
                            return Ok(Ended::Stopped);
                        }
                    }
                }
                continue;
            }
            let applied = match dir.apply(&self.stop).await {
                Ok(a) => a,
                Err(e) => {
                    if !self.retry(dir, &mut connected, e).await? {
                        return Ok(Ended::Stopped);
                    }
                    continue;
                }
            };
            match applied {
                Applied::Stopped => return Ok(Ended::Stopped),
                Applied::End(end) => return Ok(Ended::By(end)),
                Applied::Batch => {
                    crate::metrics::resumed();
                    self.backoff.reset();
                    if self.release && since.elapsed() >= SLICE && Self::contended() {
                        dir.release().await;
                        connected = false;
                        tokio::task::yield_now().await;
                    }
                }
                Applied::Nothing => {
                    crate::metrics::resumed();
                    self.backoff.reset();
                    if let Until::CaughtUp { .. } = self.until {
                        return Ok(Ended::CaughtUp);
                    }
                    match dir.idle().await {
                        Ok(Some(end)) => return Ok(Ended::By(end)),
                        Ok(None) => {}
                        Err(e) => {
                            if !self.retry(dir, &mut connected, e).await? {
                                return Ok(Ended::Stopped);
                            }
                            continue;
                        }
                    }
                    // Priority: a stop first, then news from the source, then the poll
                    // (which also covers a notification missed or not available). A fleet's
                    // tenant lets its connection go as soon as another tenant waits for one.
                    let limit = crate::pg::Limit::get().filter(|_| self.release);
                    tokio::select! {
                        biased;
                        _ = self.stop.wait() => return Ok(Ended::Stopped),
                        _ = dir.changed() => {}
                        _ = async {
                            match limit {
                                Some(l) => l.contended().await,
                                None => std::future::pending().await,
                            }
                        } => {
                            dir.release().await;
                            connected = false;
                            released = true;
                        }
                        _ = tokio::time::sleep(self.poll_interval) => {}
                    }
                }
            }
        }
    }

    /// Whether other connects wait for a permit of the fleet's pool.
    fn contended() -> bool {
        crate::pg::Limit::get().is_some_and(|l| l.waiting() > 0)
    }

    /// The one retry policy, from the error's kind: a transient error waits a backoff
    /// (`Ok(false)`: stopped meanwhile), an unreachable Postgres after dropping the
    /// connection; any other error ends the stream.
    async fn retry<D: Direction>(
        &mut self,
        dir: &mut D,
        connected: &mut bool,
        e: Error,
    ) -> Result<bool> {
        if e.kind().retry_policy() != RetryPolicy::RetryLater {
            return Err(e);
        }
        crate::metrics::error(e.kind().label(), None);
        if e.kind() == ErrorKind::TargetUnreachable {
            dir.disconnect();
            *connected = false;
            if let (
                Until::CaughtUp {
                    give_up_after: Some(limit),
                },
                Some(since),
            ) = (self.until, self.down_since)
                && since.elapsed() >= limit
            {
                return Err(e);
            }
            // However the outage was first noticed (mid-batch, at a look), /healthz says so.
            crate::metrics::unreachable(&e.to_string());
            if self.down_since.is_none() {
                tracing::warn!(error = %e, "Postgres is unreachable; retrying with backoff, nothing is lost meanwhile (a batch in flight rolled back and is applied again)");
                self.down_since = Some(Instant::now());
            }
        } else {
            tracing::warn!(error = %e, "SQLite is busy (the app or a reader holds it); retrying");
        }
        Ok(self.stop.sleep(self.backoff.next_wait()).await)
    }
}
