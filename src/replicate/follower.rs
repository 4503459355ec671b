//! The follower: what both streams are, whichever way they go. A [`Direction`] knows how to
//! connect, apply one batch and look around once caught up (the forward stream: SQLite's
//! changelog into Postgres; the reverse stream: Postgres' into SQLite); the follower alone
//! decides when each runs, how long to wait, and what an error means:
//! - a stop ends the stream at once, between batches;
//! - an error the kind calls transient ([`RetryPolicy::RetryLater`]) drops the connection and
//!   tries again after a capped backoff (an unreachable Postgres is waited out, for at most
//!   `give_up_after` in a switch's own drain), nothing lost: a batch that failed rolled back;
//! - any other error ends the stream, the position kept.

use std::time::Duration;

// The pace after a wake-up follows tokio's clock, which a test can pause.
use tokio::time::Instant;

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
    /// Whether a wake-up can come before its change can be read: a file notification comes
    /// while the commit is being written, a NOTIFY only after its commit.
    const WAKES_EARLY: bool = false;
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

/// How long a switch's own drain waits for the run lock before it says a daemon applies: a
/// session that held it (a run that just ended, this process' own) keeps it until its
/// backend has exited, a moment after the client let go (longer on a loaded server).
const LOCK_PATIENCE: Duration = Duration::from_secs(3);

/// How soon a daemon looks at the run lock again after finding it held: at once, then less
/// and less often (see the follower's `LockHeld`).
const LOCK_RETRY_FIRST: Duration = Duration::from_millis(10);
const LOCK_RETRY_MAX: Duration = Duration::from_millis(500);

/// A fleet daemon's tenant without a connection looks at its source this often when no
/// wake-up came (a missed notification): rarely, since idle tenants must cost nothing.
const RELEASED_POLL: Duration = Duration::from_secs(30);

/// A file notification comes while the commit that made it is still being written (the
/// WAL's last frame is written before the WAL index says it is committed; with
/// `synchronous = FULL` the WAL is synced in between), and the writer can be preempted in
/// between; nothing notifies when the commit becomes visible. After a wake-up that brought
/// nothing yet, the follower looks again soon, then less and less often: at 2, 8, 32, 128,
/// 512 and 2,048 ms after it (a commit seen at most four times as late as it became
/// visible), for `AFTER_WAKE`, then at its usual pace. A first look again at 25 ms made the
/// median lag of a fleet's writes 27 ms (BENCHMARKS.md, "Fewer round trips").
const AFTER_WAKE: Duration = Duration::from_secs(2);
const AFTER_WAKE_POLL: Duration = Duration::from_millis(2);

/// How long to wait before the next look when nothing wakes the follower: `usual`, or sooner
/// after a wake-up whose change was not seen yet (`unseen`, when it came).
fn next_look(unseen: Option<Instant>, usual: Duration) -> Duration {
    match unseen.map(|at| at.elapsed()) {
        Some(since) if since < AFTER_WAKE => (since * 3).max(AFTER_WAKE_POLL).min(usual),
        _ => usual,
    }
}

/// Drives a [`Direction`] until a stop, the end of the changelog (`Until::CaughtUp`) or the
/// direction's own end.
pub(crate) struct Follower {
    until: Until,
    poll_interval: Duration,
    stop: Shutdown,
    /// A fleet's pool: the tenant lets its connection go when idle and another waits for one.
    limit: Option<&'static crate::pg::Limit>,
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
            limit: None,
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(10)),
            down_since: None,
        }
    }

    /// A follower that lets its connection go when idle and someone waits for one, or when
    /// it held it a slice while others wait (a fleet's daemon; not a switch's drain).
    pub(crate) fn releasing(self, release: bool) -> Follower {
        let limit = crate::pg::Limit::get().filter(|_| release);
        self.releasing_to(limit)
    }

    /// [`Follower::releasing`] to a given pool.
    fn releasing_to(mut self, limit: Option<&'static crate::pg::Limit>) -> Follower {
        self.limit = limit.filter(|_| self.until == Until::Stopped);
        self
    }

    /// Runs `dir` to its end.
    pub(crate) async fn run<D: Direction>(&mut self, dir: &mut D) -> Result<Ended<D::End>> {
        let mut connected = false;
        let mut said_locked = false;
        let mut locked_since: Option<Instant> = None;
        // Released: connected again only once a wake-up brings work.
        let mut released = false;
        // A wake-up whose change was not seen yet, connected or not: a session let go just
        // after it must not wait a released tenant's long poll for a commit still becoming
        // visible.
        let mut unseen: Option<Instant> = None;
        let mut since = Instant::now();
        loop {
            if self.stop.requested() {
                return Ok(Ended::Stopped);
            }
            if released {
                if dir.worth_connecting() {
                    released = false;
                    unseen = None;
                } else {
                    tokio::select! {
                        biased;
                        _ = self.stop.wait() => return Ok(Ended::Stopped),
                        _ = dir.changed() => unseen = D::WAKES_EARLY.then(Instant::now),
                        _ = tokio::time::sleep(next_look(unseen, RELEASED_POLL)) => {}
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
                        // A later wait for the lock (a reconnect) gets its own patience.
                        locked_since = None;
                        if std::mem::take(&mut said_locked) {
                            tracing::info!("the run lock is free again; applying");
                        }
                    }
                    Ok(Connected::LockHeld) => {
                        let since = *locked_since.get_or_insert_with(Instant::now);
                        // A switch's own drain does not wait for a daemon: it waits for the
                        // daemon to apply instead (once a session just let go is surely gone).
                        if let Until::CaughtUp { .. } = self.until {
                            if since.elapsed() >= LOCK_PATIENCE {
                                return Err(Error::new(
                                    ErrorKind::State,
                                    "another sqlite2pg daemon is applying on this database; `sqlite2pg status` shows it",
                                ));
                            }
                            if !self.stop.sleep(Duration::from_millis(100)).await {
                                return Ok(Ended::Stopped);
                            }
                            continue;
                        }
                        if self.limit.is_some() {
                            // Not held while waiting: the pool serves the other tenants.
                            dir.release().await;
                        }
                        // Most often the holder is a session this daemon just let go: a
                        // fleet's tenant gives its session back with the reset that frees
                        // the lock written, not awaited, and may come back on another
                        // session before the server has run it. Looked at again soon, and
                        // said only once it lasts.
                        let held = since.elapsed();
                        if held >= LOCK_PATIENCE && !std::mem::replace(&mut said_locked, true) {
                            tracing::warn!(
                                "another session holds the run lock on this Postgres database (another sqlite2pg daemon, or this one's session from before a network drop): not applying until it is free, so that two never apply side by side. `sqlite2pg status` shows whether a daemon runs"
                            );
                        }
                        let wait = (held * 2).clamp(LOCK_RETRY_FIRST, LOCK_RETRY_MAX);
                        if !self.stop.sleep(wait).await {
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
                    unseen = None;
                    if since.elapsed() >= SLICE && self.contended() {
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
                    let limit = self.limit;
                    tokio::select! {
                        biased;
                        _ = self.stop.wait() => return Ok(Ended::Stopped),
                        _ = dir.changed() => unseen = D::WAKES_EARLY.then(Instant::now),
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
                        _ = tokio::time::sleep(next_look(unseen, self.poll_interval)) => {}
                    }
                }
            }
        }
    }

    /// Whether other connects wait for a permit of the fleet's pool.
    fn contended(&self) -> bool {
        self.limit.is_some_and(|l| l.waiting() > 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A source whose one change is announced at once but can be read only `visible_after`
    /// later (an app preempted between writing its commit's last WAL frame and the WAL index),
    /// applied into a target that is always reachable. The scheduling alone is under test.
    struct EarlyWake {
        start: Instant,
        visible_after: Duration,
        announced: bool,
        applied_at: Option<Duration>,
        releases: usize,
        /// Until when another session holds the run lock.
        lock_free_after: Duration,
    }

    impl EarlyWake {
        fn new(visible_after: Duration) -> EarlyWake {
            EarlyWake {
                start: Instant::now(),
                visible_after,
                announced: false,
                applied_at: None,
                releases: 0,
                lock_free_after: Duration::ZERO,
            }
        }

        fn readable(&self) -> bool {
            self.start.elapsed() >= self.visible_after
        }
    }

    impl Direction for EarlyWake {
        type End = ();
        const WAKES_EARLY: bool = true;

        async fn connect(&mut self) -> Result<Connected> {
            if self.start.elapsed() < self.lock_free_after {
                return Ok(Connected::LockHeld);
            }
            Ok(Connected::Ready)
        }

        fn disconnect(&mut self) {}

        async fn release(&mut self) {
            self.releases += 1;
        }

        async fn apply(&mut self, _stop: &Shutdown) -> Result<Applied<()>> {
            if self.applied_at.is_some() {
                return Ok(Applied::End(()));
            }
            if !self.readable() {
                return Ok(Applied::Nothing);
            }
            self.applied_at = Some(self.start.elapsed());
            Ok(Applied::Batch)
        }

        async fn idle(&mut self) -> Result<Option<()>> {
            Ok(None)
        }

        async fn changed(&mut self) {
            if std::mem::replace(&mut self.announced, true) {
                std::future::pending::<()>().await;
            }
        }

        fn worth_connecting(&mut self) -> bool {
            self.applied_at.is_none() && self.readable()
        }
    }

    async fn follow(source: &mut EarlyWake, limit: Option<&'static crate::pg::Limit>) {
        let (_trigger, stop) = Shutdown::new();
        let mut follower =
            Follower::new(Until::Stopped, Duration::from_secs(1), stop).releasing_to(limit);
        let ended = follower.run(source).await;
        assert!(matches!(ended, Ok(Ended::By(()))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_that_lets_its_session_go_just_after_an_early_wake_up_looks_again_soon() {
        let limit = crate::pg::Limit::of_test(1);
        // Another tenant waits for a session all along: this one lets its session go as soon
        // as it has nothing to do, right after the wake-up that brought nothing yet.
        let _other = limit.waiting_for_test();
        let mut source = EarlyWake::new(Duration::from_millis(100));
        follow(&mut source, Some(limit)).await;
        assert!(source.releases >= 1, "the session was never let go");
        let late = source.applied_at.expect("applied");
        // Looks at 2, 8, 32 and 128 ms after the wake-up: seen at 128 ms, not at the
        // released tenant's 30 s poll.
        assert!(
            late <= Duration::from_millis(140),
            "applied {late:?} after the wake-up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_keeps_its_session_looks_again_sooner_than_its_poll_after_an_early_wake_up()
     {
        let mut source = EarlyWake::new(Duration::from_millis(60));
        follow(&mut source, None).await;
        assert_eq!(source.releases, 0);
        let late = source.applied_at.expect("applied");
        // Seen at the look at 128 ms, not at the 1 s poll.
        assert!(
            late <= Duration::from_millis(140),
            "applied {late:?} after the wake-up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_lock_a_session_just_let_go_still_holds_delays_the_stream_by_milliseconds() {
        // The lock is free 15 ms after the start (the reset of a session given back has
        // run): looked at again at 10, 20 and 40 ms, not after half a second.
        let mut source = EarlyWake::new(Duration::ZERO);
        source.lock_free_after = Duration::from_millis(15);
        follow(&mut source, None).await;
        let late = source.applied_at.expect("applied");
        assert!(
            late <= Duration::from_millis(50),
            "applied {late:?} after the start"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_readable_long_after_its_wake_up_waits_for_the_usual_poll_not_more() {
        let mut source = EarlyWake::new(Duration::from_millis(3_500));
        follow(&mut source, None).await;
        let late = source.applied_at.expect("applied");
        // The quick looks stop after AFTER_WAKE; the 1 s poll covers the rest.
        assert!(
            late <= Duration::from_millis(4_500),
            "applied {late:?} after the wake-up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_looks_after_a_wake_up_spread_out_then_fall_back_to_the_usual_pace() {
        let usual = Duration::from_secs(30);
        assert_eq!(next_look(None, usual), usual);
        let now = Instant::now();
        assert_eq!(next_look(Some(now), usual), AFTER_WAKE_POLL);
        let long_ago = now.checked_sub(AFTER_WAKE).expect("clock");
        assert_eq!(next_look(Some(long_ago), usual), usual);
        // Never longer than the usual pace.
        let recently = now.checked_sub(Duration::from_millis(100)).expect("clock");
        assert_eq!(next_look(Some(recently), usual), Duration::from_millis(300));
        assert_eq!(
            next_look(Some(recently), Duration::from_millis(200)),
            Duration::from_millis(200)
        );
    }
}
