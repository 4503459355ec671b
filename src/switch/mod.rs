//! The switch protocol: cutover and fallback are one sequence of [`Step`]s, run and described
//! by this module, with the two databases' roles swapped. Each direction is a [`Side`] that
//! says how to do each step; the order, the lease keeper, the interruption rules and what a
//! failure undoes are written here once.
//!
//! Before the fence nothing the app sees changes, so a stop there just ends the command. Behind
//! the fence, a failure or a stop lifts it (the app goes on with the database it had) until the
//! record is being committed; from then on, whether the record reached Postgres decides which
//! database the app belongs to.

pub mod cutover;
pub mod fallback;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Transaction};

use crate::error::{Error, ErrorKind, Result};
use crate::shutdown::Shutdown;
use crate::window::Window;

/// What every switch is told, whichever way it goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the two databases are.
    pub db: crate::replicate::Databases,
    /// Fence only once the lag is at most this.
    pub max_lag: Duration,
    /// How long to wait for the lag to get there.
    pub wait: Duration,
    /// How long the fence holds without renewal (the app's writes come back by themselves
    /// this long after a switch dies).
    pub lease: Duration,
}

impl Options {
    /// How the verifies of a switch compare `tables` (all when empty).
    fn verify(&self, tables: Vec<String>) -> crate::verify::Options {
        crate::verify::Options {
            db: self.db.clone(),
            examples: 5,
            tables,
            settle: Duration::from_secs(10),
        }
    }
}

/// The steps of a switch, in the order they run and are described.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Outside the window: catch up, verify, wait for the lag, make what the window needs.
    Prepare,
    /// The window opens: the database the app leaves refuses its writes, under a lease.
    Fence,
    /// The other database receives the last changes.
    Drain,
    /// The rows changed since the verify before the fence are compared.
    Verify,
    /// Ids the app takes next on the other database start past the ones handed out.
    MoveCounters,
    /// One Postgres transaction records the switch; the fence becomes permanent with it.
    Record,
    /// The other database is the app's now: what follows the record.
    HandOver,
}

/// Every step, in order.
pub const STEPS: [Step; 7] = [
    Step::Prepare,
    Step::Fence,
    Step::Drain,
    Step::Verify,
    Step::MoveCounters,
    Step::Record,
    Step::HandOver,
];

impl Step {
    /// Its name in the log line that times the steps inside the window.
    fn label(self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::Fence => "fence",
            Step::Drain => "drain",
            Step::Verify => "verify",
            Step::MoveCounters => "counters",
            Step::Record => "record",
            Step::HandOver => "hand over",
        }
    }
}

/// A fence's lease, renewed on a connection of its own so that a slow step never lets it
/// lapse, and a dead switch stops renewing at once.
pub enum Lease {
    /// Cutover's fence on SQLite writes.
    Sqlite(rusqlite::Connection),
    /// Fallback's fence on Postgres writes, with the tenant it fences.
    Postgres(Client, String),
}

impl Lease {
    /// Renews it for `lease` more; `false` when it is lost (lifted, or it ran out).
    async fn renew(&mut self, holder: &str, lease: Duration) -> Result<bool> {
        match self {
            Lease::Sqlite(conn) => tokio::task::block_in_place(|| {
                crate::sqlite::capture::renew_fence(conn, holder, lease)
            }),
            Lease::Postgres(client, tenant) => {
                crate::pg::reverse::renew(client, tenant, holder, lease).await
            }
        }
    }
}

/// The one lease keeper: a task renewing the fence while the switch works behind it.
struct Keeper {
    lost: Arc<AtomicBool>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    fn start(mut lease: Lease, holder: String, length: Duration) -> Keeper {
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let every = (length / 5).min(Duration::from_secs(1));
        let flag = lost.clone();
        let task = tokio::spawn(async move {
            let mut wait = every;
            loop {
                // Biased: a stop wins over a renewal that is due at the same moment.
                tokio::select! {
                    biased;
                    _ = stopped.changed() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                match lease.renew(&holder, length).await {
                    Ok(true) => wait = every,
                    Ok(false) => {
                        tracing::error!(
                            "the fence lease was lost (lifted, or it ran out); this switch will not be recorded"
                        );
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    // The app holds the lock, or the connection hiccupped: try again soon;
                    // the lease has slack.
                    Err(e) => {
                        tracing::warn!(error = %e, "could not renew the fence lease yet");
                        wait = Duration::from_millis(20);
                    }
                }
            }
        });
        Keeper { lost, stop, task }
    }

    fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        if self.task.await.is_err() {
            tracing::error!("the fence lease task panicked");
        }
    }
}

/// One direction of the switch: how each step is done there. The protocol calls them in the
/// order of [`STEPS`]; an implementation never orders steps itself.
pub(crate) trait Side {
    /// What `Prepare` hands the steps behind the fence.
    type Ready;
    /// The raised fence, for making it permanent or lifting it.
    type Fenced;
    /// What the dry run reads to describe the steps.
    type Facts;
    /// What the switch did.
    type Outcome;

    /// The command: "cutover" or "fallback".
    fn what(&self) -> &'static str;
    /// The database the app writes to until the record: "SQLite" or "Postgres".
    fn from(&self) -> &'static str;
    /// The shared knobs.
    fn options(&self) -> &Options;

    /// `--abort`: lifts a fence a killed or hung switch left, so the app writes to the
    /// database it had at once; refused once the switch is recorded. The holder of the fence
    /// that was up, if one was.
    async fn abort(&self, client: &mut Client) -> Result<Option<String>>;
    /// A switch a killed run recorded, completed now (run only, never by the dry run).
    async fn completed(&self, client: &Client) -> Result<Option<Self::Outcome>>;
    /// Refuses when this switch cannot be made at all (the dry run refuses alike).
    async fn check(&self, client: &Client) -> Result<()>;
    /// What the dry run reads.
    async fn facts(&self, client: &Client) -> Result<Self::Facts>;
    /// The lines that describe `step` (the first is numbered by the protocol).
    fn describe(&self, step: Step, facts: &Self::Facts) -> Vec<String>;

    /// [`Step::Prepare`]: everything outside the window; nothing the app sees changes.
    async fn prepare(&self, client: &mut Client, stop: &Shutdown) -> Result<Self::Ready>;
    /// The connection the lease keeper renews the fence on, made before the window opens.
    async fn lease(&self) -> Result<Lease>;
    /// [`Step::Fence`]: raises the fence; the window opens when it holds.
    async fn fence(
        &self,
        client: &mut Client,
        ready: &Self::Ready,
        holder: &str,
    ) -> Result<(Self::Fenced, Window)>;
    /// [`Step::Drain`]: every change made before the fence reaches the other side.
    async fn drain(
        &self,
        client: &mut Client,
        ready: &mut Self::Ready,
        stop: &Shutdown,
    ) -> Result<()>;
    /// [`Step::Verify`]: compares what changed since the verify before the fence; the rows
    /// compared.
    async fn verify(&self, client: &mut Client, ready: &Self::Ready) -> Result<i64>;
    /// [`Step::MoveCounters`], beside the record's transaction: how many moved.
    async fn move_counters(&self, tx: &Transaction<'_>) -> Result<usize>;
    /// [`Step::Record`]: writes the record in `tx` (committed by the protocol).
    async fn record(
        &self,
        tx: &Transaction<'_>,
        ready: &Self::Ready,
        window: &Window,
        done: Done,
    ) -> Result<()>;
    /// Makes the fence permanent, last before the record commits; `false` when its lease was
    /// lost, so the app may have written meanwhile.
    async fn make_permanent(
        &self,
        fenced: &Self::Fenced,
        tx: &Transaction<'_>,
        holder: &str,
    ) -> Result<bool>;
    /// Lifts the fence after a failure: the app goes on with the database it had.
    async fn lift(&self, client: &mut Client, fenced: Self::Fenced);
    /// [`Step::HandOver`]: after the record.
    async fn hand_over(
        &self,
        client: &Client,
        ready: Self::Ready,
        window: Window,
        done: Done,
    ) -> Result<Self::Outcome>;
    /// The record's commit failed, yet Postgres has it (asked anew).
    async fn recorded_anyway(&self, e: Error) -> Result<Self::Outcome>;
    /// Whether Postgres holds the record, asked on a fresh connection (`None`: unreachable).
    async fn recorded(&self) -> Option<bool>;
    /// The record's commit failed and Postgres cannot be asked whether it has it.
    fn unknown_outcome(&self, e: Error) -> Error;
}

/// What the steps behind the fence counted, for the record and the result line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Done {
    /// Rows (or whole tables) compared inside the window.
    pub rows_verified: i64,
    /// Sequences or counters moved.
    pub moved: usize,
}

/// Who holds a fence: `what` (the command), this process and this host, for `status`.
fn fence_holder(what: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    format!("sqlite2pg {what}, pid {} on {host}", std::process::id())
}

fn refuse(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::State, msg)
}

/// The steps `--dry-run` prints, after the checks a run makes first.
pub(crate) async fn describe<S: Side>(side: &S, client: &Client) -> Result<Vec<String>> {
    side.check(client).await?;
    let facts = side.facts(client).await?;
    let mut out = Vec::new();
    for (n, step) in STEPS.iter().enumerate() {
        for (i, line) in side.describe(*step, &facts).into_iter().enumerate() {
            out.push(if i == 0 {
                format!("{}. {line}", n + 1)
            } else {
                format!("   {line}")
            });
        }
    }
    Ok(out)
}

/// How long each step inside the window took, for the log.
struct Times {
    last: Instant,
    done: Vec<(Step, f64)>,
}

impl Times {
    fn new(started: Instant) -> Times {
        Times {
            last: started,
            done: Vec::new(),
        }
    }

    fn mark(&mut self, step: Step) {
        let now = Instant::now();
        self.done
            .push((step, (now - self.last).as_secs_f64() * 1000.0));
        self.last = now;
    }

    fn text(&self) -> String {
        self.done
            .iter()
            .map(|(s, ms)| format!("{} {ms:.1} ms", s.label()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs the switch. `client` must not hold the run lock (the daemon may). A stop (`stop`,
/// SIGINT/SIGTERM) before the record is being committed lifts the fence at once.
pub(crate) async fn run<S: Side>(
    side: &S,
    client: &mut Client,
    stop: &Shutdown,
) -> Result<S::Outcome> {
    if let Some(done) = side.completed(client).await? {
        return Ok(done);
    }
    side.check(client).await?;
    let Some(mut ready) = stop.or_stop(side.prepare(client, stop)).await.transpose()? else {
        return Err(refuse(format!(
            "interrupted (SIGINT/SIGTERM) before the fence: nothing was changed, and the app writes to {} as before",
            side.from()
        )));
    };
    let lease = side.lease().await?;
    let holder = fence_holder(side.what());
    let (fenced, window) = side.fence(client, &ready, &holder).await?;
    let mut times = Times::new(window.started());
    times.mark(Step::Fence);
    let length = side.options().lease;
    let keeper = Keeper::start(lease, holder.clone(), length);
    tracing::info!(holder = %holder, lease_secs = length.as_secs_f64(), "{} writes fenced", side.from());
    let committing = AtomicBool::new(false);
    let result = {
        let work = behind_fence(
            side,
            client,
            &mut ready,
            &fenced,
            &window,
            &holder,
            &keeper,
            &committing,
            &mut times,
            stop,
        );
        tokio::pin!(work);
        // Biased: work that finished wins over a stop that arrived at the same moment.
        tokio::select! {
            biased;
            r = &mut work => r,
            _ = stop.wait() => {
                if committing.load(Ordering::SeqCst) {
                    tracing::warn!("a stop was asked for while the {} is being recorded: finishing the record first", side.what());
                    (&mut work).await
                } else {
                    Err(refuse(format!(
                        "interrupted (SIGINT/SIGTERM) before the {what} was recorded: the fence is lifted and the app writes to {from} again; nothing was switched",
                        what = side.what(),
                        from = side.from()
                    )))
                }
            }
        }
    };
    keeper.stop().await;
    match result {
        Ok(done) => {
            let outcome = side.hand_over(client, ready, window, done).await?;
            times.mark(Step::HandOver);
            tracing::info!(steps = %times.text(), "{} done", side.what());
            Ok(outcome)
        }
        // The record's commit failed or its outcome is unknown: whether Postgres has it
        // decides which database the app belongs to.
        Err(e) if committing.load(Ordering::SeqCst) => match side.recorded().await {
            Some(true) => side.recorded_anyway(e).await,
            Some(false) => {
                side.lift(client, fenced).await;
                Err(e)
            }
            None => Err(side.unknown_outcome(e)),
        },
        Err(e) => {
            side.lift(client, fenced).await;
            Err(e)
        }
    }
}

/// The steps inside the window, up to the record's commit.
#[allow(clippy::too_many_arguments)]
async fn behind_fence<S: Side>(
    side: &S,
    client: &mut Client,
    ready: &mut S::Ready,
    fenced: &S::Fenced,
    window: &Window,
    holder: &str,
    keeper: &Keeper,
    committing: &AtomicBool,
    times: &mut Times,
    stop: &Shutdown,
) -> Result<Done> {
    side.drain(client, ready, stop).await?;
    times.mark(Step::Drain);
    let rows_verified = side.verify(client, ready).await?;
    times.mark(Step::Verify);
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::from_pg(format!("cannot start the {} transaction", side.what()), e))?;
    let moved = side.move_counters(&tx).await?;
    times.mark(Step::MoveCounters);
    let done = Done {
        rows_verified,
        moved,
    };
    side.record(&tx, ready, window, done).await?;
    // The fence becomes permanent last before the record commits: a kill between the two
    // leaves the app fenced (loud, and a rerun or `--abort` settles it), never writing to both.
    if keeper.lost() || !side.make_permanent(fenced, &tx, holder).await? {
        return Err(refuse(format!(
            "the {from} fence lease ran out or was lifted (`{what} --abort`?) before the {what} was recorded, so the app may have written to {from} since: nothing was switched; run {what} again",
            what = side.what(),
            from = side.from()
        )));
    }
    committing.store(true, Ordering::SeqCst);
    tx.commit()
        .await
        .map_err(|e| Error::from_pg(format!("cannot commit the {}", side.what()), e))?;
    times.mark(Step::Record);
    Ok(done)
}

/// Waits until the lag `look` reads (seconds, and whether a daemon runs) is at most
/// `max_lag`, or no daemon runs (the switch then drains itself), for at most `wait`.
async fn wait_for_lag(
    lag_name: &str,
    max_lag: Duration,
    wait: Duration,
    mut look: impl AsyncFnMut() -> Result<(f64, bool)>,
) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let (lag, daemon_running) = look().await?;
        if lag <= max_lag.as_secs_f64() || !daemon_running {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(refuse(format!(
                "the {lag_name} stayed at {lag:.1} s (more than --max-lag {:.1} s) for {:.0} s; nothing was fenced. Retry when the daemon has caught up",
                max_lag.as_secs_f64(),
                wait.as_secs_f64()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits, for at most `limit`, until the running daemon has applied `changes` (`applied`
/// says whether it has). A daemon that does not is behind or waits for a person: a state to
/// look at with `status`, not an unreachable database.
async fn wait_applied(
    limit: Duration,
    changes: &str,
    again: &str,
    mut applied: impl AsyncFnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !applied().await? {
        if Instant::now() >= deadline {
            return Err(refuse(format!(
                "the daemon did not apply {changes} within {:.0} s: it is behind, or stopped on something it waits for a person to fix (`sqlite2pg status` shows its lag and last error); nothing was switched. {again}",
                limit.as_secs_f64()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
