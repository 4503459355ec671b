//! The one shutdown token: SIGINT and SIGTERM set it, and every phase (snapshot, stream,
//! verify, cutover, the daemon's waits) stops at its next safe point when it is set. A
//! phase stopped this way leaves nothing half-applied: the next run resumes.

use std::time::Duration;

use tokio::sync::watch;

/// A cheap, cloneable view of "has a stop been asked for".
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The side that asks for the stop (signals, or a test).
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

impl Trigger {
    /// Asks every holder of the token to stop.
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }
}

impl Shutdown {
    /// A token and the trigger that sets it.
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger { tx }, Shutdown { rx })
    }

    /// A token set by SIGINT or SIGTERM, listened for on `rt`. `on_signal` runs once, when
    /// the first signal arrives (to say what stopping means for the command at hand).
    pub fn on_signals(
        rt: &tokio::runtime::Runtime,
        on_signal: impl FnOnce() + Send + 'static,
    ) -> Shutdown {
        let (trigger, token) = Shutdown::new();
        let signalled = listen_for_signals(rt);
        rt.spawn(async move {
            signalled.await;
            on_signal();
            trigger.fire();
        });
        token
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once a stop is asked for (never, if the trigger is dropped unfired).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs `work` until it ends (`Some`) or a stop is asked for (`None`; `work` is dropped
    /// at its current await point).
    pub async fn or_stop<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            r = work => Some(r),
            _ = self.wait() => None,
        }
    }

    /// Sleeps `d` on this thread, waking early on a stop; `false` when stopped.
    pub fn sleep_blocking(&self, d: Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        while std::time::Instant::now() < deadline {
            if self.requested() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20).min(d));
        }
        !self.requested()
    }

    /// Sleeps `d`, waking early on a stop; `false` when stopped.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.requested(),
            _ = self.wait() => false,
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now, on this thread: a handler installed later
/// by a spawned task leaves a window in which a signal kills the process with no cleanup (a
/// test sending SIGTERM right after start found it).
fn listen_for_signals(
    rt: &tokio::runtime::Runtime,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    use tokio::signal::unix::{SignalKind, signal};
    let _context = rt.enter();
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            // No handler could be installed: the default action (exit) stays.
            (Err(_), Err(_)) => std::future::pending::<()>().await,
        }
    }
}

/// Backoff with full jitter: a random wait in [base/2, base] for this attempt, with base
/// doubling from `first` up to `cap`. Jitter keeps daemons restarted together (a Postgres
/// failover seen by several hosts) from retrying in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first`, never above `cap`.
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            next: first,
        }
    }

    /// The wait before the next attempt (and doubles the base for the one after).
    pub fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        base / 2 + base.mul_f64(fastrand::f64() / 2.0)
    }

    /// An attempt succeeded: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_waits_grow_to_the_cap_and_stay_within_the_jitter_band() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut bases = Vec::new();
        for _ in 0..8 {
            let w = b.next_wait();
            bases.push(w);
        }
        let expected = [100u64, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (w, base) in bases.iter().zip(expected) {
            let base = Duration::from_millis(base);
            assert!(
                *w >= base / 2 && *w <= base,
                "{w:?} not in [{:?}, {base:?}]",
                base / 2
            );
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn waits_differ_between_daemons() {
        let waits: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_wait())
            .collect();
        assert!(waits.len() > 1, "no jitter: {waits:?}");
    }

    #[tokio::test]
    async fn a_fired_trigger_wakes_every_sleeper() {
        let (trigger, token) = Shutdown::new();
        let other = token.clone();
        let sleeper = tokio::spawn(async move { other.sleep(Duration::from_secs(30)).await });
        assert!(!token.requested());
        trigger.fire();
        let woke = tokio::time::timeout(Duration::from_secs(2), sleeper).await;
        assert!(matches!(woke, Ok(Ok(false))), "{woke:?}");
        assert!(token.requested());
        assert!(!token.sleep_blocking(Duration::from_secs(30)));
    }
}
