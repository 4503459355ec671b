//! One daemon for a whole fleet: every tenant's file followed by one process over a bounded
//! pool of Postgres connections, through kill -9, a Postgres restart, and files that come and
//! go. This binary has the test cluster to itself, because it restarts it.

mod common;

use std::path::PathBuf;

use common::fleet::*;
use common::*;

/// The app: a Python process writing to its tenants' files (each transaction reads, then
/// writes, inside one `BEGIN IMMEDIATE`) until the file `stop` exists. It keeps how many
/// transactions committed so far in `{stop}.{pid}.ok`, and prints at the end how many
/// committed, then each error.
const APP: &str = r#"
import os, sqlite3, sys, time
stop, paths = sys.argv[1], sys.argv[2:]
tally = f"{stop}.{os.getpid()}"
conns = [sqlite3.connect(p, timeout=5, isolation_level=None) for p in paths]
ok, failed, i = 0, [], 0
while not os.path.exists(stop):
    c = conns[i % len(conns)]
    try:
        c.execute("BEGIN IMMEDIATE")
        n = c.execute("SELECT count(*) FROM clients").fetchone()[0]
        c.execute("INSERT INTO clients (name, visits) VALUES (?, ?)", (f"w{i}", n))
        c.execute("UPDATE clients SET visits = visits + 1 WHERE id = (abs(random()) % ?) + 1", (max(n, 1),))
        if i % 7 == 0:
            c.execute("DELETE FROM clients WHERE id = (SELECT min(id) FROM clients)")
        c.execute("COMMIT")
        ok += 1
        with open(tally + ".tmp", "w") as f:
            f.write(str(ok))
        os.replace(tally + ".tmp", tally + ".ok")
    except sqlite3.Error as e:
        failed.append(f"{paths[i % len(paths)]}: {e}")
        try:
            c.execute("ROLLBACK")
        except sqlite3.Error:
            pass
    i += 1
    time.sleep(0.01)
print(ok)
for f in failed:
    print(f)
"#;

/// Makes the apps' stop file when dropped: a test that fails before its end must not leave
/// them writing (they hold the test's output open, and the run would wait for them).
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "");
    }
}

fn app_writer(paths: &[PathBuf], stop: &std::path::Path) -> std::process::Child {
    std::process::Command::new("python3")
        .arg("-c")
        .arg(APP)
        .arg(stop)
        .args(paths)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the app (python3)")
}

/// How many transactions an app committed, and its errors.
fn app_result(app: std::process::Child) -> (u64, Vec<String>) {
    let out = app.wait_with_output().expect("wait for the app");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let ok = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
    (ok, lines.map(String::from).collect())
}

/// Waits until the apps writing until `stop` have committed more than `more_than`
/// transactions between them: a count, not a rate, for a busy machine writes slower.
fn wait_written(stop: &std::path::Path, more_than: u64) {
    let dir = stop.parent().expect("the stop file is in a directory");
    let prefix = format!("{}.", stop.file_name().unwrap().to_string_lossy());
    let written = || -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.starts_with(&prefix) && name.ends_with(".ok")
            })
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.parse::<u64>().ok())
            .sum()
    };
    wait_until(
        &format!("the apps to commit more than {more_than} transactions"),
        std::time::Duration::from_secs(120),
        || written() > more_than,
    );
}

/// Stops the apps; how many transactions they committed, none of them having failed.
fn stop_apps(stop: &std::path::Path, writers: Vec<std::process::Child>) -> u64 {
    std::fs::write(stop, "").unwrap();
    let mut written = 0;
    for w in writers {
        let (ok, failed) = app_result(w);
        assert!(failed.is_empty(), "app transactions failed: {failed:?}");
        written += ok;
    }
    written
}

/// An Alembic batch migration, as `op.batch_alter_table` runs it on SQLite: the table is
/// rebuilt under a temporary name with a new column, its rows copied, the old one dropped and
/// the new one renamed, in one transaction.
const BATCH_MIGRATION: &str = "BEGIN IMMEDIATE;
CREATE TABLE _alembic_tmp_clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, visits INTEGER DEFAULT 0, tier TEXT DEFAULT 'basic');
INSERT INTO _alembic_tmp_clients (id, name, visits) SELECT id, name, visits FROM clients;
DROP TABLE clients;
ALTER TABLE _alembic_tmp_clients RENAME TO clients;
COMMIT;";

/// Backends of the daemon on Postgres right now, as the server counts them: one whose
/// connection the daemon let go counts until it has exited.
fn daemon_connections(c: &mut postgres::Client) -> i64 {
    scalar(
        c,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sqlite2pg'
           AND datname = current_database()",
    )
}

/// Waits for every tenant to catch up, showing the daemon's log if one does not.
fn wait_all_caught_up(files: &[(String, PathBuf)], db: &TestDb, d: &Daemon) {
    for (name, path) in files {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !caught_up(path, &db.url, name) {
            assert!(
                std::time::Instant::now() < deadline,
                "tenant {name} did not catch up within 60 s:\n{}",
                d.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Both tests restart the cluster: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn one_daemon_follows_200_tenants_over_a_bounded_pool_through_migrations_kills_restarts_and_files_coming_and_going()
 {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    // Three shapes, both journal modes: keyed, AUTOINCREMENT with a table without a key, and
    // a child table whose foreign key SQLite does not enforce (FKs off, its default).
    let shape = |i: usize| {
        match i % 3 {
        0 => "PRAGMA journal_mode = wal;
             CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, visits INTEGER DEFAULT 0);
             INSERT INTO clients (name) VALUES ('seed');",
        1 => "CREATE TABLE clients (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, visits INTEGER, note TEXT DEFAULT 'x');
             CREATE TABLE audit (at TEXT, what TEXT);
             INSERT INTO clients (name, visits) VALUES ('seed', 0);
             INSERT INTO audit VALUES ('t', 'keyless');",
        _ => "PRAGMA journal_mode = wal; PRAGMA foreign_keys = off;
             CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, visits INTEGER DEFAULT 0);
             CREATE TABLE notes (id INTEGER PRIMARY KEY, client_id INTEGER REFERENCES clients(id), body TEXT);
             INSERT INTO clients (name) VALUES ('seed'); INSERT INTO notes VALUES (1, 1, 'n'), (2, 99, 'orphan');",
    }
    };
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for i in 0..200 {
        let name = format!("t{i:03}");
        tenant_file(&tenants, &format!("{name}.db"), shape(i));
        files.push((name.clone(), tenants.join(format!("{name}.db"))));
    }
    let db = TestDb::new();
    let cfg = glob_config(dir.path(), &db, &tenants);
    let metrics = format!("127.0.0.1:{}", free_port());
    let max = 6;
    let run_args = ["--max-connections", "6", "--metrics-addr", metrics.as_str()];
    let d = Daemon::start_fleet(&cfg, &db, &run_args);
    wait_all_caught_up(&files, &db, &d);
    // Three app processes; t005's app is offboarded while its file goes away (below).
    let stop = dir.path().join("stop");
    let _stops = StopOnDrop(stop.clone());
    let writers: Vec<_> = files
        .chunks(67)
        .map(|c| {
            let paths: Vec<PathBuf> = c
                .iter()
                .filter(|(n, _)| n != "t005")
                .map(|(_, p)| p.clone())
                .collect();
            app_writer(&paths, &stop)
        })
        .collect();
    let mut c = db.client();
    let mut most = 0;
    for _ in 0..10 {
        most = most.max(daemon_connections(&mut c));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Alembic batch migrations while the apps write and the daemon streams.
    for name in ["t010", "t020", "t030"] {
        sqlite3_shell(&tenants.join(format!("{name}.db")), BATCH_MIGRATION);
    }
    for _ in 0..10 {
        most = most.max(daemon_connections(&mut c));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // kill -9 in the middle of the writes; the next daemon resumes every tenant.
    d.kill9();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let d = Daemon::start_fleet(&cfg, &db, &run_args);
    // A tenant that appears while the daemon runs, and one whose file goes away.
    tenant_file(&tenants, "t999.db", shape(0));
    files.push(("t999".into(), tenants.join("t999.db")));
    let away = dir.path().join("t005.db.away");
    std::fs::rename(tenants.join("t005.db"), &away).unwrap();
    d.wait_for_log("the tenant's file is gone");
    if own_cluster() {
        restart_cluster(std::time::Duration::from_millis(500));
    }
    for _ in 0..20 {
        most = most.max(daemon_connections(&mut db.client()));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    wait_written(&stop, 100);
    let written = stop_apps(&stop, writers);
    assert!(written > 100, "the apps wrote {written} transactions");
    // t005 is paused while its file is away: back, it catches up with what it missed.
    std::fs::rename(&away, tenants.join("t005.db")).unwrap();
    sqlite3_shell(
        &tenants.join("t005.db"),
        "INSERT INTO clients (name) VALUES ('while away');",
    );
    wait_all_caught_up(&files, &db, &d);
    // Tenants are tasks: a thread each would be 201 (a stack and a hand-off at every round
    // trip each).
    let threads = daemon_threads(d.pid());
    assert!(
        threads < 50,
        "the fleet's daemon runs {threads} threads for 201 tenants"
    );
    assert!(
        most <= max,
        "the daemon held {most} connections, over --max-connections {max}"
    );
    let mut c = db.client();
    for (i, (name, path)) in files.iter().enumerate() {
        c.batch_execute(&format!("SET search_path = tenant_{name}"))
            .unwrap();
        assert_table_equal(path, &mut c, "clients", "id");
        if i % 3 == 2 && name != "t999" {
            assert_table_equal(path, &mut c, "notes", "id");
        }
    }
    // The migrated tenants' new column is on Postgres, with each row's value.
    let tiers: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM tenant_t020.clients WHERE tier = 'basic'",
    );
    assert!(tiers > 0);
    let out = on_fleet(&cfg, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(phase_count(&status, "streaming"), 201, "{status:#}");
    let (_, scrape) = http_get(&metrics, "/metrics");
    assert_eq!(
        scrape.matches("sqlite2pg_tenant_phase{").count(),
        201,
        "one phase series per tenant"
    );
    assert!(
        scrape.contains("sqlite2pg_fleet_tenants{state=\"running\"} 201"),
        "{scrape}"
    );
    // Tenants woken by their apps' writes took sessions of the pool (a tenant's first one
    // comes from its start, not the pool's queue), each wait measured.
    let waits = metric_value(&scrape, "sqlite2pg_fleet_session_wait_seconds_count")
        .unwrap_or_else(|| panic!("no session wait histogram:\n{scrape}"));
    assert!(waits > 0.0, "{waits} session waits for 201 tenants");
    let log = d.log.clone();
    assert!(
        d.stop(),
        "the fleet's daemon stops cleanly:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A tenant whose file appears while Postgres is down is waited out like the others, not
/// stopped on an error: the fleet's address is known to be right (found by the differential
/// tester's fleet mode, where a tenant new to the fleet met a Postgres restart).
#[test]
fn a_tenant_that_appears_while_postgres_restarts_waits_for_it() {
    let _one = serial();
    assert!(
        own_cluster(),
        "this test restarts Postgres: unset SQLITE2PG_TEST_PG so the harness starts its own"
    );
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    let shape = "CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
                 INSERT INTO clients (name) VALUES ('seed');";
    tenant_file(&tenants, "first.db", shape);
    let db = TestDb::new();
    let cfg = glob_config(dir.path(), &db, &tenants);
    let d = Daemon::start_fleet(&cfg, &db, &[]);
    let first = tenants.join("first.db");
    wait_tenant_caught_up(&first, &db.url, "first", std::time::Duration::from_secs(30));
    // The new file comes once Postgres is down, and Postgres stays down for 3 s more.
    let adder = {
        let tenants = tenants.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            tenant_file(&tenants, "late.db", shape);
        })
    };
    restart_cluster(std::time::Duration::from_millis(3_500));
    adder.join().unwrap();
    let late = tenants.join("late.db");
    // It came while Postgres was down.
    wait_tenant_caught_up(&late, &db.url, "late", std::time::Duration::from_secs(60));
    let log = d.log_text();
    assert!(
        log.contains("tenant{tenant=late}") && log.contains("Postgres is unreachable"),
        "the late tenant met Postgres down: the test tested nothing\n{log}"
    );
    assert!(
        !log.contains("the tenant's daemon stopped"),
        "a tenant was stopped on an error instead of waiting for Postgres:\n{log}"
    );
    let mut c = db.client();
    c.batch_execute("SET search_path = tenant_late").unwrap();
    assert_table_equal(&late, &mut c, "clients", "id");
    assert!(d.stop(), "the fleet's daemon stops cleanly");
}

/// A tenant's clients and notes on both sides: its file's, and the shared tables' rows of it.
fn shared_clients_equal(c: &mut postgres::Client, name: &str, path: &std::path::Path, tier: bool) {
    let clients = if tier {
        "id || '|' || coalesce(name, '-') || '|' || coalesce(visits, -1) || '|' || coalesce(tier, '-')"
    } else {
        "id || '|' || coalesce(name, '-') || '|' || coalesce(visits, -1)"
    };
    shared_rows_equal(path, c, name, "clients", clients, "id");
    let notes = "coalesce(client_id, -1) || '|' || coalesce(body, '-')";
    shared_rows_equal(path, c, name, "notes", notes, "1");
}

/// The shared-tables layout through what the schema-per-tenant fleet goes through: tenants
/// starting at once make each shared table once, a kill -9 lands while they copy and build
/// its keys, the apps write on, one tenant's Alembic batch migration makes it wait alone
/// until a person adds the column, and Postgres restarts. Every tenant's rows end equal.
#[test]
fn a_shared_tables_fleet_goes_through_kills_restarts_and_one_tenants_migration() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for i in 0..30 {
        let name = format!("s{i:02}");
        let journal = if i % 2 == 0 { "wal" } else { "delete" };
        // The same ids in every tenant; a keyless table with an orphan (FKs off).
        let seed: String = (0..200)
            .map(|j| format!("('c{j}', {j}),"))
            .collect::<String>()
            .trim_end_matches(',')
            .to_string();
        tenant_file(
            &tenants,
            &format!("{name}.db"),
            &format!(
                "PRAGMA journal_mode = {journal}; PRAGMA foreign_keys = off;
                 CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, visits INTEGER DEFAULT 0);
                 CREATE TABLE notes (client_id INTEGER REFERENCES clients(id), body TEXT);
                 INSERT INTO clients (name, visits) VALUES {seed};
                 INSERT INTO notes VALUES (1, 'n'), (1, 'n'), (999, 'orphan');"
            ),
        );
        files.push((name.clone(), tenants.join(format!("{name}.db"))));
    }
    let db = TestDb::new();
    let cfg = config(dir.path(), &db, &shared_fleet(&tenants));
    let run_args = ["--max-connections", "6"];
    // Killed while the tenants make the tables, copy and build their keys.
    let d = Daemon::start_fleet(&cfg, &db, &run_args);
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    d.kill9();
    let d = Daemon::start_fleet(&cfg, &db, &run_args);
    wait_all_caught_up(&files, &db, &d);
    let stop = dir.path().join("stop");
    let _stops = StopOnDrop(stop.clone());
    let paths: Vec<PathBuf> = files.iter().map(|(_, p)| p.clone()).collect();
    let writers: Vec<_> = paths.chunks(15).map(|c| app_writer(c, &stop)).collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // One tenant migrates ahead of the others: the shared table has no `tier` yet.
    let migrated = &files[7];
    sqlite3_shell(&migrated.1, BATCH_MIGRATION);
    d.wait_for_log("has no column tier");
    // `status` names it among the tenants waiting for a person, with why.
    let status = fleet_status(&cfg);
    let waiting = status["waiting"].to_string();
    assert!(
        waiting.contains(&migrated.0) && waiting.contains("has no column tier"),
        "{status:#}"
    );
    d.kill9();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let d = Daemon::start_fleet(&cfg, &db, &run_args);
    if own_cluster() {
        restart_cluster(std::time::Duration::from_millis(500));
    }
    std::thread::sleep(std::time::Duration::from_millis(1_000));
    wait_written(&stop, 50);
    let written = stop_apps(&stop, writers);
    assert!(written > 50, "the apps wrote {written} transactions");
    let others: Vec<(String, PathBuf)> = files
        .iter()
        .filter(|(n, _)| *n != migrated.0)
        .cloned()
        .collect();
    wait_all_caught_up(&others, &db, &d);
    let mut c = db.client();
    let waiting: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'crm.clients'::regclass AND attname = 'tier'",
    );
    assert_eq!(
        waiting, 0,
        "nothing changed the shared table's shape by itself"
    );
    // A person makes the shared table hold both; the migrated tenant goes on by itself.
    c.batch_execute("ALTER TABLE crm.clients ADD COLUMN tier text DEFAULT 'basic'")
        .unwrap();
    // Its changes since the migration are in no changelog (the rebuilt table had no capture
    // until its plan passed): they come with the re-synchronization of the table.
    let resynced = format!("tenant{{tenant={}}}", migrated.0);
    wait_until(
        "the migrated tenant to re-synchronize its table",
        std::time::Duration::from_secs(60),
        || {
            d.log_text()
                .lines()
                .any(|l| l.contains(&resynced) && l.contains("re-read for re-synchronization"))
        },
    );
    wait_all_caught_up(&files, &db, &d);
    for (name, path) in &files {
        shared_clients_equal(&mut c, name, path, name == &migrated.0);
        let out = on_fleet(&cfg, &["--tenant", name, "verify"]);
        assert!(out.status.success(), "verify {name}: {}", text(&out));
    }
    let log = d.log.clone();
    assert!(
        d.stop(),
        "the fleet's daemon stops cleanly:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// How many threads a process runs, from /proc.
fn daemon_threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no thread count in /proc/{pid}/status"))
}
