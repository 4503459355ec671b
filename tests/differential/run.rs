//! Runs a scenario against a real SQLite file, the real daemon and a real Postgres database,
//! and checks after every step: caught up, both sides equal by a comparison of our own, `verify`
//! of the same opinion, and the bank's total never wrong on Postgres while it catches up.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::apps::{BANK, BANK_TOTAL};
use crate::common::*;
use crate::oracle;
use crate::scenario::{Item, Scenario};

/// What one run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Checks passed.
    pub checks: usize,
    /// Statements that SQLite itself refused (constraints), as an app sees them.
    pub refused: usize,
    /// Reads of the bank on Postgres while the daemon ran.
    pub bank_reads: u64,
    /// Faults injected.
    pub faults: usize,
    /// Moves completed: a cutover, writes on Postgres, and a fallback.
    pub moves: usize,
    /// The daemon's largest resident set seen, in KiB.
    pub max_rss_kib: u64,
    /// The longest wait for the daemon to catch up after a step, in ms.
    pub max_catch_up_ms: u64,
    /// What went wrong, if anything.
    pub failure: Option<String>,
}

/// Watches the bank on Postgres while the daemon runs: its total must never move.
struct BankReader {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    wrong: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BankReader {
    /// `shared`: the bank is a fleet's shared table, holding every tenant's accounts.
    fn start(url: &str, schema: &str, tenant: &str, shared: bool) -> BankReader {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let wrong = Arc::new(Mutex::new(Vec::new()));
        let (s, r, w, url) = (stop.clone(), reads.clone(), wrong.clone(), url.to_string());
        let (schema, tenant) = (schema.to_string(), tenant.to_string());
        let thread = std::thread::spawn(move || {
            let mut client: Option<postgres::Client> = None;
            while !s.load(Ordering::SeqCst) {
                if client.is_none() {
                    client = postgres::Client::connect(&url, postgres::NoTls).ok();
                }
                let Some(c) = client.as_mut() else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                // One statement, one snapshot: the table's phase and its total together.
                let own = if shared {
                    format!("b.{} = $1 AND", oracle::TENANT_COLUMN)
                } else {
                    String::new()
                };
                let row = c.query_opt(
                    &format!(
                        "SELECT sum(b.balance)::bigint, count(*) FROM \"{schema}\".{BANK} b
                         WHERE {own} (SELECT phase FROM sqlite2pg.table_state
                                WHERE source_table = '{BANK}' AND tenant = $1) = 'ready'
                         HAVING count(*) > 0"
                    ),
                    &[&tenant],
                );
                match row {
                    Ok(Some(row)) => {
                        r.fetch_add(1, Ordering::SeqCst);
                        let total: Option<i64> = row.get(0);
                        if total != Some(BANK_TOTAL) {
                            let mut v = w.lock().unwrap_or_else(|p| p.into_inner());
                            v.push(format!(
                                "the bank on Postgres held {total:?} over {} rows, never a total SQLite had ({BANK_TOTAL})",
                                row.get::<_, i64>(1)
                            ));
                        }
                    }
                    Ok(None) => {}
                    Err(_) => client = None,
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        BankReader {
            stop,
            reads,
            wrong,
            thread: Some(thread),
        }
    }

    fn wrong(&self) -> Option<String> {
        let v = self.wrong.lock().unwrap_or_else(|p| p.into_inner());
        v.first()
            .map(|first| format!("{first} ({} such reads)", v.len()))
    }
}

impl Drop for BankReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Which database the app writes.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// SQLite; the daemon follows it into Postgres.
    Forward,
    /// Postgres, after the cutover; the daemon follows it back into SQLite.
    Reverse,
    /// SQLite again, after the fallback; no daemon.
    FellBack,
    /// Postgres, after a one-way cutover (a fleet's shared tables): nothing follows it.
    Moved,
}

/// How a runner's commands name its app.
#[derive(Clone)]
enum Who {
    /// One file (`--source`, `--target`): the `public` schema, the unnamed tenant.
    Single,
    /// A tenant of the fleet a config file names: in schema `tenant_{name}`, or with
    /// `shared` in the fleet's shared tables of schema `SHARED_SCHEMA`, its rows those whose
    /// tenant column holds its name.
    Tenant {
        config: PathBuf,
        name: String,
        shared: bool,
    },
}

/// The schema of a shared fleet's tables.
const SHARED_SCHEMA: &str = "crm";

/// The daemon: a runner's own, or the one a fleet's runners share.
type SharedDaemon = Rc<RefCell<Option<Daemon>>>;

struct Runner<'a> {
    path: PathBuf,
    who: Who,
    phase: Phase,
    /// The app's connection to Postgres after the cutover.
    pg: Option<postgres::Client>,
    db: &'a TestDb,
    app: rusqlite::Connection,
    fk: bool,
    shell: bool,
    recursive: bool,
    daemon: SharedDaemon,
    reader: Option<BankReader>,
    busy: Vec<std::thread::JoinHandle<()>>,
    out: Outcome,
    /// `check` ran before the daemon first started.
    checked: bool,
}

/// A failure, with where it happened.
type Step = Result<(), String>;

impl Runner<'_> {
    /// Runs a command on this app: `--source`/`--target`, or `--config`/`--tenant`.
    fn command(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<&str> = match &self.who {
            Who::Single => vec![
                "--source",
                self.path.to_str().expect("utf-8 path"),
                "--target",
                &self.db.url,
            ],
            Who::Tenant { config, name, .. } => vec![
                "--config",
                config.to_str().expect("utf-8 path"),
                "--tenant",
                name,
            ],
        };
        all.extend_from_slice(args);
        sqlite2pg(&all)
    }

    fn schema(&self) -> String {
        match &self.who {
            Who::Single => "public".into(),
            Who::Tenant { shared: true, .. } => SHARED_SCHEMA.into(),
            Who::Tenant { name, .. } => format!("tenant_{name}"),
        }
    }

    /// In a fleet's shared tables, the value of the tenant column in this app's rows.
    fn shared_tenant(&self) -> Option<&str> {
        match &self.who {
            Who::Tenant {
                name, shared: true, ..
            } => Some(name),
            _ => None,
        }
    }

    fn tenant(&self) -> &str {
        match &self.who {
            Who::Single => "",
            Who::Tenant { name, .. } => name,
        }
    }

    /// The app's move begins as a user's does, with `check`: it must find the generated app
    /// clean (its values are all movable), and from then on the whole move must complete. A
    /// finding that stops it is a false alarm of `check`'s or a refusal of `run`'s that check
    /// did not announce; either is a failure.
    fn check_first(&mut self) -> Step {
        if self.checked {
            return Ok(());
        }
        self.checked = true;
        let out = self.command(&["check", "--json"]);
        if out.status.code() == Some(0) {
            return Ok(());
        }
        let errors = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .map(|r| {
                let findings = r["findings"].as_array().cloned().unwrap_or_default();
                let problems = r["problems"].as_array().cloned().unwrap_or_default();
                findings
                    .into_iter()
                    .chain(problems)
                    .filter(|f| f["severity"] == "error")
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_else(|_| text(&out));
        Err(format!("check found the app not clean:\n{errors}"))
    }

    fn start(&mut self) {
        // A fleet's daemon serves the others still.
        if self.phase == Phase::FellBack && matches!(self.who, Who::Single) {
            return;
        }
        let mut daemon = self.daemon.borrow_mut();
        if daemon.is_none() {
            *daemon = Some(match &self.who {
                Who::Single => Daemon::start(&self.path, self.db, &["--chunk-rows", "4"]),
                // One session for the tenants: every wake-up of one hands it over.
                Who::Tenant { config, .. } => Daemon::start_fleet(
                    config,
                    self.db,
                    &["--chunk-rows", "4", "--max-connections", "3"],
                ),
            });
        }
        drop(daemon);
        if self.reader.is_none() && self.phase != Phase::FellBack {
            self.reader = Some(BankReader::start(
                &self.db.url,
                &self.schema(),
                self.tenant(),
                self.shared_tenant().is_some(),
            ));
        }
    }

    fn tx(&mut self, commit: bool, stmts: &[String]) {
        if self.shell {
            self.tx_shell(commit, stmts);
            return;
        }
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        let ok = self.app.execute_batch("BEGIN").is_ok()
            && stmts.iter().all(|s| self.app.execute_batch(s).is_ok());
        // An app whose statement fails rolls its transaction back.
        if !ok || self.app.execute_batch(end).is_err() {
            self.out.refused += 1;
            let _ = self.app.execute_batch("ROLLBACK");
        }
    }

    /// The same transaction through the system's sqlite3 shell: the app's older library.
    /// `-bail` stops at the first failing statement and the open transaction dies with it.
    fn tx_shell(&mut self, commit: bool, stmts: &[String]) {
        use std::io::Write;
        let mut script = String::new();
        if self.fk {
            script += "PRAGMA foreign_keys=ON;\n";
        }
        if self.recursive {
            script += "PRAGMA recursive_triggers=ON;\n";
        }
        script += "BEGIN;\n";
        for s in stmts {
            script += s;
            script += ";\n";
        }
        script += if commit { "COMMIT;\n" } else { "ROLLBACK;\n" };
        let mut child = std::process::Command::new("sqlite3")
            .args(["-bail", "-cmd", ".timeout 5000"])
            .arg(&self.path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run the sqlite3 shell (apt-get install sqlite3)");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let ok = child.wait().map(|s| s.success()).unwrap_or(false);
        if !ok {
            self.out.refused += 1;
        }
    }

    fn ddl(&mut self, stmts: &[String]) {
        // Alembic's batch mode turns foreign keys off around a table copy.
        let _ = self.app.execute_batch("PRAGMA foreign_keys = OFF");
        self.tx(true, stmts);
        let _ = self.app.execute_batch(if self.fk {
            "PRAGMA foreign_keys = ON"
        } else {
            "PRAGMA foreign_keys = OFF"
        });
    }

    fn busy(&mut self, ms: u64) {
        let path = self.path.clone();
        let (locked, wait) = std::sync::mpsc::channel();
        self.busy.push(std::thread::spawn(move || {
            let Ok(c) = rusqlite::Connection::open(&path) else {
                let _ = locked.send(());
                return;
            };
            let _ = c.busy_timeout(Duration::from_secs(5));
            let held = c.execute_batch("BEGIN IMMEDIATE").is_ok();
            let _ = locked.send(());
            if held {
                std::thread::sleep(Duration::from_millis(ms));
                let _ = c.execute_batch("COMMIT");
            }
        }));
        let _ = wait.recv_timeout(Duration::from_secs(6));
    }

    /// One app transaction on Postgres; a statement Postgres refuses rolls it back, as an
    /// app's would.
    fn pg_tx(&mut self, commit: bool, stmts: &[String]) {
        // The connection may have died with a Postgres restart: the app reconnects.
        if self
            .pg
            .as_mut()
            .is_none_or(|c| c.simple_query("SELECT 1").is_err())
        {
            self.pg = postgres::Client::connect(&self.db.url, postgres::NoTls).ok();
        }
        let Some(c) = self.pg.as_mut() else {
            self.out.refused += 1;
            return;
        };
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        let ok = c.batch_execute("BEGIN").is_ok()
            && stmts.iter().all(|s| {
                c.batch_execute(s)
                    .map_err(|e| {
                        if std::env::var_os("SQLITE2PG_DIFF_VERBOSE").is_some() {
                            println!("Postgres refused {s}: {e:?}");
                        }
                    })
                    .is_ok()
            })
            && c.batch_execute(end).is_ok();
        if !ok {
            self.out.refused += 1;
            let _ = c.batch_execute("ROLLBACK");
        }
    }

    fn cutover(&mut self) -> Step {
        self.start();
        // An app that kept foreign keys off has orphans: its operator keeps them.
        let out = self.command(&["cutover", "--orphans", "keep"]);
        if !out.status.success() {
            return Err(format!("the cutover failed:\n{}", text(&out)));
        }
        self.phase = if self.shared_tenant().is_some() {
            self.out.moves += 1;
            Phase::Moved
        } else {
            Phase::Reverse
        };
        Ok(())
    }

    fn fallback(&mut self) -> Step {
        for t in self.busy.drain(..) {
            let _ = t.join();
        }
        self.start();
        self.pg = None;
        let out = self.command(&["fallback"]);
        if !out.status.success() {
            return Err(format!("the fallback failed:\n{}", text(&out)));
        }
        let deadline = Instant::now() + CATCH_UP;
        if let Who::Tenant { name, .. } = self.who.clone() {
            // The fleet's daemon sees the record and ends that tenant alone.
            let done = format!("the tenant's daemon is done tenant={name}");
            loop {
                let daemon = self.daemon.borrow();
                let log = daemon.as_ref().map(Daemon::log_text).unwrap_or_default();
                if log.lines().any(|l| l.ends_with(&done)) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "the fleet's daemon did not end tenant {name} within {} s of its fallback:\n{}",
                        CATCH_UP.as_secs(),
                        tail(&log, 30)
                    ));
                }
                drop(daemon);
                std::thread::sleep(Duration::from_millis(50));
                self.start();
            }
        } else if let Some(mut d) = self.daemon.borrow_mut().take() {
            // The daemon sees the record and ends by itself.
            loop {
                match d.try_exit() {
                    Some(Some(0)) => break,
                    Some(code) => {
                        return Err(format!(
                            "the daemon ended with {code:?} after the fallback:\n{}",
                            tail(&d.log_text(), 30)
                        ));
                    }
                    None if Instant::now() > deadline => {
                        return Err(format!(
                            "the daemon did not end within {} s of the fallback:\n{}",
                            CATCH_UP.as_secs(),
                            tail(&d.log_text(), 30)
                        ));
                    }
                    None => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.phase = Phase::FellBack;
        self.out.moves += 1;
        Ok(())
    }

    /// After the cutover: SQLite holds what Postgres holds once the reverse stream has
    /// applied every change the app made there.
    fn check_back(&mut self) -> Step {
        for t in self.busy.drain(..) {
            let _ = t.join();
        }
        if self.phase == Phase::Reverse {
            self.start();
            let started = Instant::now();
            let mut daemon = self.daemon.borrow_mut();
            let daemon = daemon.as_mut().expect("started above");
            wait_reverse_caught_up(daemon, &self.db.url, self.tenant())?;
            let ms = started.elapsed().as_millis() as u64;
            self.out.max_catch_up_ms = self.out.max_catch_up_ms.max(ms);
        }
        let diffs = oracle::differences(
            &self.path,
            &self.db.url,
            &self.schema(),
            self.shared_tenant(),
        );
        if !diffs.is_empty() {
            return Err(format!(
                "SQLite differs from Postgres {}:\n  {}",
                match self.phase {
                    Phase::Reverse => "after the reverse stream caught up",
                    Phase::Moved => "after its one-way cutover",
                    _ => "after the fallback",
                },
                diffs.join("\n  ")
            ));
        }
        self.out.checks += 1;
        Ok(())
    }

    fn check(&mut self) -> Step {
        if self.phase != Phase::Forward {
            return self.check_back();
        }
        for t in self.busy.drain(..) {
            let _ = t.join();
        }
        self.start();
        let started = Instant::now();
        let schema = self.schema();
        let mut daemon = self.daemon.borrow_mut();
        let daemon = daemon.as_mut().expect("started above");
        if let Some(kib) = rss_kib(daemon.pid()) {
            self.out.max_rss_kib = self.out.max_rss_kib.max(kib);
        }
        wait_caught_up(daemon, &self.path, &self.db.url, self.tenant())?;
        let tenant = self.shared_tenant().map(str::to_string);
        let mut diffs = oracle::differences(&self.path, &self.db.url, &schema, tenant.as_deref());
        // Caught up by position can still be a moment before a table's schema change is
        // followed: differences must persist to count.
        let settle = Instant::now();
        while !diffs.is_empty() && settle.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
            wait_caught_up(daemon, &self.path, &self.db.url, self.tenant())?;
            diffs = oracle::differences(&self.path, &self.db.url, &schema, tenant.as_deref());
        }
        let ms = started.elapsed().as_millis() as u64;
        self.out.max_catch_up_ms = self.out.max_catch_up_ms.max(ms);
        let verify = self.command(&["verify"]);
        if !diffs.is_empty() {
            return Err(format!(
                "Postgres differs from SQLite after catching up:\n  {}\n(verify {} it)",
                diffs.join("\n  "),
                if verify.status.success() {
                    "did NOT see"
                } else {
                    "saw"
                }
            ));
        }
        if !verify.status.success() {
            return Err(format!(
                "verify reports a difference the independent comparison does not see:\n{}",
                text(&verify)
            ));
        }
        if let Some(w) = self.reader.as_ref().and_then(BankReader::wrong) {
            return Err(format!("guarantee 3: {w}"));
        }
        self.out.checks += 1;
        Ok(())
    }

    fn item(&mut self, item: &Item) -> Step {
        match item {
            Item::Journal(mode) => {
                let _ =
                    self.app
                        .query_row(&format!("PRAGMA journal_mode = {mode}"), [], |_| Ok(()));
            }
            Item::ForeignKeys(on) => {
                self.fk = *on;
                let _ = self.app.execute_batch(if *on {
                    "PRAGMA foreign_keys = ON"
                } else {
                    "PRAGMA foreign_keys = OFF"
                });
            }
            Item::ShellLibrary => self.shell = true,
            Item::RecursiveTriggers => {
                self.recursive = true;
                let _ = self.app.execute_batch("PRAGMA recursive_triggers = ON");
            }
            Item::Ddl(stmts) => self.ddl(stmts),
            Item::Tx { commit, stmts } => self.tx(*commit, stmts),
            Item::Start => {
                self.check_first()?;
                self.start();
            }
            Item::Kill(ms) => {
                self.out.faults += 1;
                std::thread::sleep(Duration::from_millis(*ms));
                let killed = self.daemon.borrow_mut().take();
                if let Some(d) = killed {
                    d.kill9();
                }
                self.start();
            }
            Item::Stop => {
                self.out.faults += 1;
                let killed = self.daemon.borrow_mut().take();
                if let Some(d) = killed {
                    d.kill9();
                }
            }
            Item::PgRestart(ms) => {
                self.out.faults += 1;
                if own_cluster() {
                    restart_cluster(Duration::from_millis(*ms));
                } else {
                    // Another's cluster cannot be restarted: the daemon loses Postgres instead.
                    let killed = self.daemon.borrow_mut().take();
                    if let Some(d) = killed {
                        d.kill9();
                        self.start();
                    }
                }
            }
            Item::Busy(ms) => {
                self.out.faults += 1;
                self.busy(*ms);
            }
            Item::Check => self.check()?,
            // Shrinking may leave these without the cutover they need: they are skipped then.
            Item::Cutover if self.phase == Phase::Forward => self.cutover()?,
            Item::PgTx { commit, stmts } if self.phase == Phase::Reverse => {
                self.pg_tx(*commit, stmts)
            }
            Item::Fallback if self.phase == Phase::Reverse => self.fallback()?,
            Item::Cutover | Item::PgTx { .. } | Item::Fallback => {}
        }
        if let Some(d) = self.daemon.borrow_mut().as_mut()
            && let Some(why) = stopped(d)
        {
            return Err(why);
        }
        Ok(())
    }
}

/// Whether the daemon stopped by itself, or (a fleet's) stopped one of its tenants on an
/// error: either is what a single-file daemon's exit is, a finding.
fn stopped(d: &mut Daemon) -> Option<String> {
    if let Some(code) = d.try_exit() {
        return Some(format!(
            "the daemon stopped by itself ({code:?}):\n{}",
            tail(&d.log_text(), 30)
        ));
    }
    let log = d.log_text();
    log.contains("the tenant's daemon stopped").then(|| {
        format!(
            "the fleet's daemon stopped a tenant on an error:\n{}",
            tail(&log, 30)
        )
    })
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How long a daemon may take to catch up after one step: steps are small (the longest seen
/// is about a second), so this is a stall, not a slow drain.
const CATCH_UP: Duration = Duration::from_secs(20);

/// Like the harness's wait, but a daemon that stops or stalls is a finding, not a panic, and
/// an app with no table left is caught up once the stream has started.
fn wait_caught_up(d: &mut Daemon, path: &Path, url: &str, tenant: &str) -> Step {
    wait_for(d, || caught_up(path, url, tenant))
}

/// The reverse stream's wait: no change the app made on Postgres is still pending.
fn wait_reverse_caught_up(d: &mut Daemon, url: &str, tenant: &str) -> Step {
    wait_for(d, || {
        postgres::Client::connect(url, postgres::NoTls)
            .ok()
            .and_then(|mut c| {
                c.query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM sqlite2pg.reverse_change
                                        WHERE applied_at IS NULL AND tenant = $1)",
                    &[&tenant],
                )
                .ok()
            })
            .is_some_and(|r| r.get::<_, bool>(0))
    })
}

/// Waits until `done` while the daemon runs: one that stops or stalls is a finding.
fn wait_for(d: &mut Daemon, done: impl Fn() -> bool) -> Step {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        if let Some(why) = stopped(d) {
            return Err(format!("before catching up, {why}"));
        }
        if done() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the daemon did not catch up within {} s:\n{}",
                CATCH_UP.as_secs(),
                tail(&d.log_text(), 30)
            ));
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn caught_up(path: &Path, url: &str, tenant: &str) -> bool {
    // Read-write for the reason the oracle gives.
    let Ok(conn) = rusqlite::Connection::open(path) else {
        return false;
    };
    let Ok(newest) = conn.query_row(
        "SELECT coalesce(max(seq), 0) FROM _sqlite2pg_changes",
        [],
        |r| r.get::<_, i64>(0),
    ) else {
        return false;
    };
    // The stream's position is stored before the snapshot lists its tables: every table of
    // the app must be ready too, or a check right after the start compares a snapshot still
    // building its keys (and a cutover then finds the migration in phase snapshot).
    let Ok(tables) = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table'
           AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_sqlite2pg%' ESCAPE '\\'",
        [],
        |r| r.get::<_, i64>(0),
    ) else {
        return false;
    };
    let Ok(mut c) = postgres::Client::connect(url, postgres::NoTls) else {
        return false;
    };
    c.query_opt(
        "SELECT s.position >= $1
            AND NOT EXISTS (SELECT 1 FROM sqlite2pg.table_state t WHERE t.tenant = s.tenant AND phase <> 'ready')
            AND (SELECT count(*) FROM sqlite2pg.table_state t WHERE t.tenant = s.tenant) >= $3
         FROM sqlite2pg.stream s WHERE s.tenant = $2",
        &[&newest, &tenant, &tables],
    )
    .ok()
    .flatten()
    .is_some_and(|r| r.get::<_, bool>(0))
}

/// The kind of a failure, so shrinking keeps the failure it started with and not another. A
/// command that failed is told apart by the first words of its error: a shrunk scenario that
/// only fails to cut over for want of a daemon is another failure.
pub fn kind(failure: &str) -> String {
    for command in ["cutover failed", "fallback failed"] {
        if let Some(at) = failure.find(command) {
            let error = failure[at..].lines().nth(1).unwrap_or("");
            let words: Vec<&str> = error.split_whitespace().take(6).collect();
            return format!("{command}: {}", words.join(" "));
        }
    }
    [
        "check found the app not clean",
        "stopped by itself",
        "did not catch up",
        "differs from SQLite",
        "verify reports",
        "guarantee 3",
        "SQLite differs from Postgres",
        "after the fallback",
    ]
    .into_iter()
    .find(|k| failure.contains(k))
    .unwrap_or("other")
    .to_string()
}

/// Runs `s` from an empty file and database, with a final check.
pub fn run(s: &Scenario, dir: &Path) -> Outcome {
    let path = fresh_file(dir, "app.db");
    let db = TestDb::new();
    let mut r = Runner::new(path, Who::Single, &db, Rc::default());
    let mut result = Ok(());
    for (n, item) in s.items.iter().enumerate() {
        if let Err(e) = r.item(item) {
            result = Err(format!("at item {} ({}): {e}", n + 1, headline(item)));
            break;
        }
    }
    if result.is_ok() && !matches!(s.items.last(), Some(Item::Check)) {
        result = r.check().map_err(|e| format!("at the final check: {e}"));
    }
    r.out.failure = result.err();
    r.finish()
}

/// Runs several scenarios as the tenants of one fleet, followed by one daemon: their items
/// taken in turn (the first of each, then the second of each...), each checked on its own,
/// the faults (a kill, a Postgres restart) falling on all of them. The outcome adds them
/// up; its failure names the app. `shared`: the fleet's layout is one set of shared tables
/// (the scenarios then are of one schema, `apps::shared_scenarios`).
pub fn run_fleet(scenarios: &[Scenario], dir: &Path, shared: bool) -> Outcome {
    let files = dir.join("fleet");
    let _ = std::fs::remove_dir_all(&files);
    std::fs::create_dir_all(&files).expect("the fleet's directory");
    let db = TestDb::new();
    let config = dir.join("fleet.toml");
    let layout = if shared {
        format!("layout = \"shared\"\nschema = {SHARED_SCHEMA:?}\n")
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "target = {:?}\n\n[fleet]\nfiles = {:?}\n{layout}",
            db.url,
            format!("{}/*.db", files.display())
        ),
    )
    .expect("write the fleet's config");
    let daemon: SharedDaemon = Rc::default();
    let mut runners: Vec<Runner> = (0..scenarios.len())
        .map(|i| {
            let name = format!("app{i}");
            let path = fresh_file(&files, &format!("{name}.db"));
            let who = Who::Tenant {
                config: config.clone(),
                name,
                shared,
            };
            Runner::new(path, who, &db, daemon.clone())
        })
        .collect();
    let mut failure = None;
    let longest = scenarios.iter().map(|s| s.items.len()).max().unwrap_or(0);
    'steps: for n in 0..longest {
        for (i, (r, s)) in runners.iter_mut().zip(scenarios).enumerate() {
            let Some(item) = s.items.get(n) else { continue };
            if let Err(e) = r.item(item) {
                failure = Some(format!(
                    "app {i}, at item {} ({}): {e}",
                    n + 1,
                    headline(item)
                ));
                break 'steps;
            }
        }
    }
    if failure.is_none() {
        for (i, r) in runners.iter_mut().enumerate() {
            if let Err(e) = r.check() {
                failure = Some(format!("app {i}, at the final check: {e}"));
                break;
            }
        }
    }
    let mut out = Outcome {
        failure,
        ..Outcome::default()
    };
    for r in runners {
        let o = r.finish();
        out.checks += o.checks;
        out.refused += o.refused;
        out.bank_reads += o.bank_reads;
        out.faults += o.faults;
        out.moves += o.moves;
        out.max_rss_kib = out.max_rss_kib.max(o.max_rss_kib);
        out.max_catch_up_ms = out.max_catch_up_ms.max(o.max_catch_up_ms);
    }
    if let Some(d) = daemon.borrow_mut().take() {
        d.kill9();
    }
    out
}

/// `dir/name`, with no file (nor journal) of an earlier run left.
fn fresh_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    for ext in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(dir.join(format!("{name}{ext}")));
    }
    path
}

impl<'a> Runner<'a> {
    fn new(path: PathBuf, who: Who, db: &'a TestDb, daemon: SharedDaemon) -> Runner<'a> {
        let app = rusqlite::Connection::open(&path).expect("open the app's SQLite file");
        app.busy_timeout(Duration::from_secs(5))
            .expect("set the app's busy timeout");
        Runner {
            path,
            who,
            phase: Phase::Forward,
            pg: None,
            db,
            app,
            fk: false,
            shell: false,
            recursive: false,
            daemon,
            reader: None,
            busy: Vec::new(),
            out: Outcome::default(),
            checked: false,
        }
    }

    /// Stops what the runner started (its daemon, if it is its own) and gives its outcome.
    fn finish(mut self) -> Outcome {
        self.out.bank_reads = self
            .reader
            .as_ref()
            .map_or(0, |b| b.reads.load(Ordering::SeqCst));
        drop(self.reader.take());
        for t in self.busy.drain(..) {
            let _ = t.join();
        }
        if matches!(self.who, Who::Single)
            && let Some(d) = self.daemon.borrow_mut().take()
        {
            d.kill9();
        }
        std::mem::take(&mut self.out)
    }
}

fn headline(item: &Item) -> String {
    Scenario {
        items: vec![item.clone()],
    }
    .to_string()
    .lines()
    .next()
    .unwrap_or("")
    .to_string()
}
