//! Test harness: a throwaway Postgres cluster per test binary (or SQLITE2PG_TEST_PG), a fresh
//! database per test, SQLite files in temp dirs, and the real `sqlite2pg` binary.
#![allow(dead_code)]

pub mod fleet;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Password of the throwaway cluster's superuser; tests also check it never leaks.
pub const PASSWORD: &str = "pw-Secret-9f3k";

static CLUSTER: OnceLock<String> = OnceLock::new();
/// pg_ctl, data dir and server options of the cluster this process started.
static OWN_CLUSTER: OnceLock<(PathBuf, PathBuf, String, PathBuf)> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// The server build the harness starts clusters from: SQLITE2PG_TEST_PGBIN (a `bin` directory
/// holding initdb, pg_ctl and postgres, e.g. from a wheel listed in tests/pg-versions), else
/// Debian's.
pub fn pg_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SQLITE2PG_TEST_PGBIN") {
        let p = PathBuf::from(dir);
        assert!(
            p.join("initdb").exists() && p.join("pg_ctl").exists(),
            "SQLITE2PG_TEST_PGBIN={} holds no initdb and pg_ctl: point it at a PostgreSQL \
             server's bin directory (scripts/test installs those of tests/pg-versions)",
            p.display()
        );
        return p;
    }
    for v in ["16", "15", "17"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if p.join("initdb").exists() {
            return p;
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return p;
        }
    }
    panic!(
        "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/{{15,16,17}}/bin). \
         Install them with: apt-get update && apt-get install -y postgresql-15 \
         or point SQLITE2PG_TEST_PG at a server (postgres://user:password@host:port/postgres)"
    );
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A server tool run as the `postgres` user when we are root (Postgres refuses root). Builds
/// from a wheel find their libraries in the `lib` beside `bin`.
pub fn as_postgres(bin: &Path) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    if let Some(lib) = wheel_lib_dir() {
        c.env("LD_LIBRARY_PATH", lib);
    }
    c
}

/// The `lib` beside SQLITE2PG_TEST_PGBIN, when that is set and has one.
fn wheel_lib_dir() -> Option<PathBuf> {
    let bin = PathBuf::from(std::env::var_os("SQLITE2PG_TEST_PGBIN")?);
    let lib = bin.parent()?.join("lib");
    lib.is_dir().then_some(lib)
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

fn start_cluster() -> String {
    let bin = pg_bindir();
    let dir = std::env::temp_dir().join(format!("sqlite2pg-test-pg-{}", unique()));
    std::fs::create_dir_all(&dir).expect("create cluster dir");
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, PASSWORD).expect("write password file");
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(ok.success(), "cannot chown the cluster dir to postgres");
    }
    let data = dir.join("data");
    let out = as_postgres(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Test binaries run side by side (scripts/run_tests.py), so another process can take the
    // port between free_port and the server's bind: try again on a new one.
    let mut attempt = 0;
    let (port, opts) = loop {
        attempt += 1;
        let port = free_port();
        let _ = std::fs::remove_file(dir.join("log"));
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200",
            dir.display()
        );
        let out = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(dir.join("log"))
            .args(["-w", "start"])
            .output()
            .expect("run pg_ctl");
        if out.status.success() {
            break (port, opts);
        }
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        assert!(
            attempt < 5 && log.contains("Address already in use"),
            "pg_ctl start failed: {}\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let _ = OWN_CLUSTER.set((
        bin.join("pg_ctl"),
        data.clone(),
        opts.clone(),
        dir.join("log"),
    ));
    // A watchdog stops the cluster and removes it once this test process is gone.
    let stop = if is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}{pgctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        pgctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    // Deliberately never waited on: the watchdog must outlive this process.
    let mut watchdog = Command::new("sh");
    if let Some(lib) = wheel_lib_dir() {
        watchdog.env("LD_LIBRARY_PATH", lib);
    }
    let watchdog = watchdog
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watchdog");
    std::mem::forget(watchdog);
    format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres")
}

/// The server log of the test cluster from byte `from` on: the harness' own cluster's log
/// file, or an external one's through `pg_read_file` when it runs a logging collector.
pub fn server_log(from: usize) -> String {
    cluster_url();
    let text = match OWN_CLUSTER.get() {
        Some((_, _, _, log)) => std::fs::read(log).expect("read the test cluster's log"),
        None => {
            let mut c = postgres::Client::connect(cluster_url(), postgres::NoTls)
                .expect("connect to the test cluster");
            let file: Option<String> = c
                .query_one("SELECT pg_current_logfile()", &[])
                .expect("pg_current_logfile")
                .get(0);
            let file = file.expect(
                "this test reads the server's log: run it on the harness' own cluster (unset SQLITE2PG_TEST_PG) or on one with logging_collector = on",
            );
            let text: String = c
                .query_one("SELECT pg_read_file($1)", &[&file])
                .expect("read the server log")
                .get(0);
            text.into_bytes()
        }
    };
    String::from_utf8_lossy(text.get(from..).unwrap_or_default()).into_owned()
}

/// Whether the tests run on a cluster this process started (and so may restart).
pub fn own_cluster() -> bool {
    cluster_url();
    OWN_CLUSTER.get().is_some()
}

/// The admin URL of the cluster tests use.
pub fn cluster_url() -> &'static str {
    CLUSTER.get_or_init(|| std::env::var("SQLITE2PG_TEST_PG").unwrap_or_else(|_| start_cluster()))
}

/// A database of its own for one test, dropped when the test ends.
pub struct TestDb {
    /// Connection URL of the database.
    pub url: String,
    name: String,
}

fn with_db(url: &str, db: &str) -> String {
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    format!("{base}/{db}")
}

impl TestDb {
    /// Creates a fresh database.
    pub fn new() -> TestDb {
        let name = format!("t_{}", unique());
        let mut admin = postgres::Client::connect(cluster_url(), postgres::NoTls)
            .expect("connect to the test cluster");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create test database");
        TestDb {
            url: with_db(cluster_url(), &name),
            name,
        }
    }

    /// A synchronous client on this database.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(cluster_url(), postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A temp dir holding one SQLite file.
pub struct SqliteFile {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The file.
    pub path: PathBuf,
}

impl SqliteFile {
    /// A new file built by running `sql`.
    pub fn new(sql: &str) -> SqliteFile {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        let conn = rusqlite::Connection::open(&path).expect("open sqlite");
        conn.execute_batch(sql).expect("build sqlite fixture");
        SqliteFile { dir, path }
    }

    /// A connection to it.
    pub fn conn(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.path).expect("open sqlite")
    }
}

/// Runs the real binary.
pub fn sqlite2pg(args: &[&str]) -> Output {
    sqlite2pg_logging(args, "warn")
}

/// Runs the real binary with its log at `level`.
pub fn sqlite2pg_logging(args: &[&str], level: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sqlite2pg"))
        .args(args)
        .env("RUST_LOG", level)
        .env_remove("SQLITE2PG_TARGET")
        .env_remove("SQLITE2PG_SOURCE")
        .output()
        .expect("run sqlite2pg")
}

/// stdout and stderr together, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `run --snapshot-only` and insists it succeeds.
pub fn snapshot(src: &Path, db: &TestDb, extra: &[&str]) -> Output {
    let mut args = vec![
        "--source",
        src.to_str().expect("utf-8 path"),
        "--target",
        &db.url,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["run", "--snapshot-only"]);
    let out = sqlite2pg(&args);
    assert!(out.status.success(), "snapshot failed:\n{}", text(&out));
    out
}

/// `check --json` of `src`, against `db` when given; the exit code and the report.
pub fn check_json(src: &Path, db: Option<&TestDb>) -> (Option<i32>, serde_json::Value) {
    let mut args = vec!["--source", src.to_str().expect("utf-8 path")];
    if let Some(db) = db {
        args.extend_from_slice(&["--target", &db.url]);
    }
    args.extend_from_slice(&["check", "--json"]);
    let out = sqlite2pg(&args);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("check --json printed no report:\n{}", text(&out)));
    (out.status.code(), report)
}

/// Every row of a Postgres query, each column rendered as text (NULL as None).
pub fn pg_rows(client: &mut postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let rows = client.query(sql, &[]).expect("query postgres");
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

/// Asserts that a table has the same rows on both sides, column by column, normalising only
/// what differs in rendering (booleans, timestamp fraction digits, numbers parsed as f64).
pub fn assert_table_equal(src: &Path, client: &mut postgres::Client, table: &str, key: &str) {
    let conn = rusqlite::Connection::open(src).expect("open sqlite");
    let mut cols: Vec<(String, String)> = Vec::new();
    {
        let mut st = conn
            .prepare(&format!(
                "PRAGMA table_info(\"{}\")",
                table.replace('"', "\"\"")
            ))
            .expect("table_info");
        let mut rows = st.query([]).expect("table_info");
        while let Some(r) = rows.next().expect("row") {
            cols.push((
                r.get(1).expect("name"),
                r.get::<_, String>(2).expect("type").to_uppercase(),
            ));
        }
    }
    let q = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    let names: Vec<String> = cols.iter().map(|(n, _)| q(n)).collect();
    let pg_names: Vec<String> = cols
        .iter()
        .map(|(n, _)| format!("{}::text", q(n)))
        .collect();
    let mut st = conn
        .prepare(&format!(
            "SELECT {} FROM {} ORDER BY {}",
            names.join(", "),
            q(table),
            q(key)
        ))
        .expect("select sqlite");
    let sqlite_rows: Vec<Vec<rusqlite::types::Value>> = st
        .query_map([], |r| {
            (0..cols.len())
                .map(|i| r.get::<_, rusqlite::types::Value>(i))
                .collect()
        })
        .expect("query sqlite")
        .collect::<Result<_, _>>()
        .expect("rows");
    client
        .batch_execute("SET TimeZone = 'UTC'")
        .expect("set the session time zone");
    // Qualified, so ORDER BY sorts by the column and not by its text rendering.
    let pg = pg_rows(
        client,
        &format!(
            "SELECT {} FROM {} t ORDER BY t.{}",
            pg_names.join(", "),
            q(table),
            q(key)
        ),
    );
    assert_eq!(sqlite_rows.len(), pg.len(), "row count of {table}");
    for (s, p) in sqlite_rows.iter().zip(&pg) {
        for ((v, pv), (name, ty)) in s.iter().zip(p).zip(&cols) {
            use rusqlite::types::Value;
            let ok = match (v, pv) {
                (Value::Null, None) => true,
                (Value::Integer(i), Some(t)) if ty.contains("BOOL") => {
                    (*i == 1 && t == "true") || (*i == 0 && t == "false")
                }
                (Value::Text(a), Some(t)) if ty.contains("BOOL") => {
                    let yes = ["true", "t", "yes", "y", "on", "1"]
                        .contains(&a.to_ascii_lowercase().as_str());
                    (yes && t == "true") || (!yes && t == "false")
                }
                (Value::Integer(i), Some(t)) => {
                    t.parse::<f64>().ok() == Some(*i as f64) || &i.to_string() == t
                }
                (Value::Real(f), Some(t)) => t.parse::<f64>().ok() == Some(*f),
                (Value::Text(a), Some(b)) if ty.contains("DATE") || ty.contains("TIME") => {
                    norm_ts(a) == norm_ts(b)
                }
                // jsonb normalises key order and escapes: compare JSON columns as JSON.
                (Value::Text(a), Some(b)) if ty.contains("JSON") => {
                    serde_json::from_str::<serde_json::Value>(a).ok()
                        == serde_json::from_str::<serde_json::Value>(b).ok()
                }
                (Value::Text(a), Some(b)) => a == b,
                (Value::Blob(a), Some(b)) => {
                    *b == format!(
                        "\\x{}",
                        a.iter().map(|x| format!("{x:02x}")).collect::<String>()
                    )
                }
                _ => false,
            };
            assert!(
                ok,
                "{table}.{name}: sqlite {v:?} != postgres {pv:?} (row {:?})",
                s.first()
            );
        }
    }
}

pub fn norm_ts(s: &str) -> String {
    // timestamptz renders in the session zone (UTC here) with an offset SQLite's text lacks.
    let s = s.replace('T', " ");
    let s = s.strip_suffix("+00").unwrap_or(&s);
    let s = s.strip_suffix('Z').unwrap_or(s).to_string();
    match s.split_once('.') {
        Some((a, frac)) => {
            let f = frac.trim_end_matches('0');
            if f.is_empty() {
                a.to_string()
            } else {
                format!("{a}.{f}")
            }
        }
        None => s,
    }
}

/// The test app's Python (tests/app/.venv, made by scripts/test).
pub fn app_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/app");
    let py = root.join(".venv/bin/python");
    assert!(
        py.exists(),
        "the test app's venv is missing; create it with: python3 -m venv tests/app/.venv && \
         tests/app/.venv/bin/pip install -r tests/app/requirements.txt (scripts/test does this)"
    );
    py
}

/// Runs `tests/app/app.py ARGS...` and insists it succeeds; returns its output.
pub fn app(args: &[&str]) -> String {
    python_app("app.py", args)
}

/// Runs `tests/app/SCRIPT ARGS...` in the test venv and insists it succeeds; returns stdout
/// and stderr together.
pub fn python_app(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/app")
        .join(script);
    let out = Command::new(app_python())
        .arg(path)
        .args(args)
        .output()
        .expect("run the test app");
    assert!(
        out.status.success(),
        "tests/app/{script} {args:?} failed:\n{}",
        text(&out)
    );
    text(&out)
}

/// The single value a Postgres query returns.
pub fn scalar<T: for<'a> postgres::types::FromSql<'a>>(
    client: &mut postgres::Client,
    sql: &str,
) -> T {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Foreign keys in the database that Postgres has validated.
pub fn validated_foreign_keys(client: &mut postgres::Client) -> i64 {
    scalar(
        client,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated",
    )
}

/// A running `sqlite2pg run` daemon, killed when dropped.
pub struct Daemon {
    child: std::process::Child,
    /// Its log (stderr), for failure messages.
    pub log: PathBuf,
    src: PathBuf,
    url: String,
    /// The fleet's tenant it follows ('' for a single file).
    tenant: String,
}

impl Daemon {
    /// Starts `run` (snapshot, then stream) with a short poll interval.
    pub fn start(src: &Path, db: &TestDb, extra: &[&str]) -> Daemon {
        Daemon::start_with(src, db, extra, &[])
    }

    /// Starts `run` with global flags `extra` and `run` flags `run_extra`.
    pub fn start_with(src: &Path, db: &TestDb, extra: &[&str], run_extra: &[&str]) -> Daemon {
        let mut args = vec![
            "--source",
            src.to_str().expect("utf-8 path"),
            "--target",
            &db.url,
        ];
        args.extend_from_slice(extra);
        Daemon::spawn(src, db, "", args, run_extra)
    }

    /// Starts `run --tenant TENANT` of the fleet the config file `config` names; `src` is
    /// the tenant's file.
    pub fn start_tenant(config: &Path, tenant: &str, src: &Path, db: &TestDb) -> Daemon {
        let args = vec![
            "--config",
            config.to_str().expect("utf-8 path"),
            "--tenant",
            tenant,
        ];
        Daemon::spawn(src, db, tenant, args, &[])
    }

    /// Starts the fleet's daemon (`run` with no tenant) of the config file `config`, with
    /// `run_extra` flags; its log goes beside the config file.
    pub fn start_fleet(config: &Path, db: &TestDb, run_extra: &[&str]) -> Daemon {
        let args = vec!["--config", config.to_str().expect("utf-8 path")];
        Daemon::spawn(config, db, "", args, run_extra)
    }

    fn spawn<'a>(
        src: &Path,
        db: &TestDb,
        tenant: &str,
        mut args: Vec<&'a str>,
        run_extra: &[&'a str],
    ) -> Daemon {
        let log = src.with_extension(format!("daemon-{}.log", unique()));
        args.extend_from_slice(&["run", "--poll-interval-ms", "100"]);
        args.extend_from_slice(run_extra);
        let child = Command::new(env!("CARGO_BIN_EXE_sqlite2pg"))
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create daemon log"))
            .spawn()
            .expect("start the daemon");
        Daemon {
            child,
            log,
            src: src.to_path_buf(),
            url: db.url.clone(),
            tenant: tenant.to_string(),
        }
    }

    /// The daemon's exit code once it has exited by itself (`Some(None)`: killed by a signal).
    pub fn try_exit(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 20 s) until the daemon's log contains `needle`, and returns the log.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon never logged {needle:?}:\n{log}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the snapshot is done and Postgres has applied every change SQLite has
    /// recorded so far.
    pub fn wait_caught_up(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll daemon") {
                panic!(
                    "the daemon exited ({status}) before catching up:\n{}",
                    self.log_text()
                );
            }
            if self.caught_up() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not catch up within 60 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn caught_up(&self) -> bool {
        caught_up(&self.src, &self.url, &self.tenant)
    }

    /// Sends SIGTERM and waits; returns whether it exited 0.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// kill -9.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the snapshot of `tenant` ('' for a single file) is done and Postgres has applied
/// every change its SQLite file `src` has recorded so far.
pub fn caught_up(src: &Path, url: &str, tenant: &str) -> bool {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(src, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return false;
    };
    let newest: i64 = match conn.query_row(
        "SELECT coalesce(max(seq), 0) FROM _sqlite2pg_changes",
        [],
        |r| r.get(0),
    ) {
        Ok(n) => n,
        Err(_) => return false,
    };
    let Ok(mut c) = postgres::Client::connect(url, postgres::NoTls) else {
        return false;
    };
    // The stream's row exists before the snapshot records its first table: an empty
    // table_state means the snapshot has not started, not that it is done.
    let row = c.query_opt(
            "SELECT s.position, (SELECT count(*) FROM sqlite2pg.table_state t WHERE t.tenant = s.tenant AND phase <> 'ready'),
                    (SELECT count(*) FROM sqlite2pg.table_state t WHERE t.tenant = s.tenant) FROM sqlite2pg.stream s
             WHERE s.tenant = $1",
            &[&tenant],
        );
    match row {
        Ok(Some(r)) => {
            r.get::<_, i64>(0) >= newest && r.get::<_, i64>(1) == 0 && r.get::<_, i64>(2) > 0
        }
        _ => false,
    }
}

/// The first column of each row `sql` returns from a SQLite file, as text.
pub fn sqlite_rows(path: &Path, sql: &str) -> Vec<String> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut st = c.prepare(sql).unwrap();
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// Runs SQL through the system `sqlite3` shell: the app's SQLite library, older than ours.
/// Like any app sharing a SQLite file, it waits for locks (Python's default is 5 s).
pub fn sqlite3_shell(src: &Path, sql: &str) {
    let out = Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(src)
        .arg(sql)
        .output()
        .expect("run the sqlite3 shell (apt-get install sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 failed on {sql}:\n{}",
        text(&out)
    );
}

/// Stops the test cluster (fast shutdown: sessions are cut), waits `pause`, starts it again on
/// the same port. Only for a cluster this process started.
pub fn restart_cluster(pause: std::time::Duration) {
    cluster_url();
    let (pg_ctl, data, opts, log) = OWN_CLUSTER.get().expect(
        "restart_cluster needs the harness's own cluster: unset SQLITE2PG_TEST_PG for this test",
    );
    let out = as_postgres(pg_ctl)
        .arg("-D")
        .arg(data)
        .args(["-m", "fast", "-w", "stop"])
        .output()
        .expect("pg_ctl stop");
    assert!(
        out.status.success(),
        "pg_ctl stop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(pause);
    let out = as_postgres(pg_ctl)
        .arg("-D")
        .arg(data)
        .args(["-o", opts, "-l"])
        .arg(log)
        .args(["-w", "start"])
        .output()
        .expect("pg_ctl start");
    assert!(
        out.status.success(),
        "pg_ctl start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the test app's writer: RATE ORM transactions/s for SECONDS.
pub fn start_writer(src: &Path, seconds: f64, rate: f64) -> std::process::Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/app/app.py");
    Command::new(app_python())
        .arg(script)
        .args([
            "write",
            src.to_str().expect("utf-8 path"),
            &seconds.to_string(),
            &rate.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the app writer")
}

/// Waits for the writer and returns its summary; insists no app transaction failed.
pub fn finish_writer(child: std::process::Child) -> serde_json::Value {
    let summary = writer_summary(child);
    assert_eq!(
        summary["failed"], 0,
        "app transactions failed while sqlite2pg ran: {summary}"
    );
    summary
}

/// Waits for the writer and returns its summary, failures included.
pub fn writer_summary(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("wait for the app writer");
    assert!(
        out.status.success(),
        "the app writer crashed:\n{}",
        text(&out)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let summary: serde_json::Value =
        serde_json::from_str(&last).unwrap_or_else(|_| panic!("writer summary: {}", text(&out)));
    assert!(summary["transactions"].as_i64().unwrap_or(0) > 0);
    summary
}

/// Compares every table of the test app on both sides: through SQLAlchemy, and row by row.
pub fn assert_app_equal(src: &Path, db: &TestDb) {
    app(&["compare", src.to_str().expect("utf-8 path"), &db.url]);
    let mut c = db.client();
    for (t, k) in [
        ("user", "id"),
        ("projects", "id"),
        ("tasks", "id"),
        ("counters", "id"),
    ] {
        assert_table_equal(src, &mut c, t, k);
    }
}

/// Every object in `sqlite_master` as `type:name`, to compare before and after.
pub fn sqlite_master(path: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(path).expect("open sqlite");
    let mut st = c
        .prepare(
            "SELECT type || ':' || name || ':' || coalesce(sql, '') FROM sqlite_master ORDER BY 1",
        )
        .expect("read sqlite_master");
    st.query_map([], |r| r.get(0))
        .expect("read sqlite_master")
        .map(|r| r.expect("row"))
        .collect()
}

/// Waits until capture is back on `table` as the daemon (or the next `run`) leaves it: its
/// triggers present and its definition recorded as it is now. From then on "caught up" means
/// the re-synchronization it asked for is applied.
pub fn wait_capture_current(path: &std::path::Path, table: &str, d: &mut Daemon) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ok = rusqlite::Connection::open(path).ok().is_some_and(|c| {
            c.query_row(
                "SELECT count(*) FROM _sqlite2pg_tables t
                   JOIN sqlite_master m ON m.type = 'table' AND m.name = t.name
                   JOIN _sqlite2pg_meta d ON d.key = 'definition:' || t.id AND d.value = m.sql
                   JOIN sqlite_master tr ON tr.type = 'trigger' AND tr.tbl_name = t.name AND tr.name = '_sqlite2pg_ai_' || t.id
                 WHERE t.name = ?1",
                [table],
                |r| r.get::<_, i64>(0),
            )
            .is_ok_and(|n| n == 1)
        });
        if ok {
            return;
        }
        if let Some(code) = d.try_exit() {
            panic!("the daemon exited ({code:?}):\n{}", d.log_text());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "capture did not come back on table {table} within 60 s:\n{}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `GET path` on a daemon's metrics address: the status code (0 when nothing answers) and
/// the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    let code = body
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        code,
        body.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// `sqlite2pg --source SRC --target DB ARGS...`.
pub fn sqlite2pg_on(src: &Path, db: &TestDb, args: &[&str]) -> Output {
    let mut all = vec![
        "--source",
        src.to_str().expect("utf-8 path"),
        "--target",
        &db.url,
    ];
    all.extend_from_slice(args);
    sqlite2pg(&all)
}

/// `status --json`, parsed (the command must succeed).
pub fn status_json(src: &Path, db: &TestDb) -> serde_json::Value {
    let out = sqlite2pg_on(src, db, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// A CRM SQLite file of about `rows` rows, from the repository's generator (a clone has
/// nothing outside it).
pub fn gen_crm(path: &Path, rows: u32) {
    let generator = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/gen_crm.py");
    let st = Command::new("python3")
        .arg(&generator)
        .arg(path)
        .arg(rows.to_string())
        .status()
        .expect("python3 gen_crm.py");
    assert!(st.success(), "gen_crm.py failed");
}

/// Polls `ready` every 20 ms until it holds; panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: std::time::Duration, mut ready: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !ready() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Sends SIGTERM to `child` and waits for it: its exit status and how long it took.
pub fn sigterm(child: &mut std::process::Child) -> (std::process::ExitStatus, std::time::Duration) {
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let t0 = std::time::Instant::now();
    let status = child.wait().expect("wait");
    (status, t0.elapsed())
}

/// The value of `series` (a metric's name with its labels, as the scrape writes them) in a
/// Prometheus scrape.
pub fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Postgres sessions of sqlite2pg (its application_name) waiting on a lock now, in the
/// client's database: the cluster is shared by the tests running beside it.
pub fn sqlite2pg_sessions_waiting_on_a_lock(client: &mut postgres::Client) -> i64 {
    scalar(
        client,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sqlite2pg' AND wait_event_type = 'Lock'
            AND datname = current_database()",
    )
}

/// The one window a cutover or fallback reports: its log line's `window_ms`, its result line's
/// "unavailable for N ms" and the record `status` shows are the same figure. Returns it.
pub fn assert_one_window(out: &Output, src: &Path, db: &TestDb, record: &str) -> f64 {
    let t = text(out);
    let logged: f64 = t
        .split("window_ms=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no window_ms in the log:\n{t}"));
    let printed: f64 = t
        .split("writes were unavailable for ")
        .nth(1)
        .and_then(|s| s.split(" ms").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no window in the result line:\n{t}"));
    let recorded = status_json(src, db)[record]["window_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no {record} window in status"));
    assert!(
        (logged - recorded).abs() < 0.01 && (printed - recorded.round()).abs() < 0.5,
        "log {logged} ms, result line {printed} ms, record {recorded} ms:\n{t}"
    );
    recorded
}
