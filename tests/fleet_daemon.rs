//! One daemon for a whole fleet: every tenant's file followed by one process over a bounded
//! pool of Postgres connections, through kill -9, a Postgres restart, and files that come and
//! go. This binary has the test cluster to itself, because it restarts it.

mod common;

use std::path::PathBuf;

use common::fleet::*;
use common::*;

/// An app writing to tenant files: each transaction reads, then writes, inside one
/// `BEGIN IMMEDIATE`, until told to stop. Returns how many committed, and the errors.
fn app_writer(
    paths: Vec<PathBuf>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let conns: Vec<rusqlite::Connection> = paths
            .iter()
            .map(|p| {
                let c = rusqlite::Connection::open(p).unwrap();
                c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
                c
            })
            .collect();
        let (mut ok, mut failed) = (0u64, Vec::new());
        let mut i = 0usize;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let c = &conns[i % conns.len()];
            let tx = (|| -> rusqlite::Result<()> {
                c.execute_batch("BEGIN IMMEDIATE")?;
                let n: i64 = c.query_row("SELECT count(*) FROM clients", [], |r| r.get(0))?;
                c.execute(
                    "INSERT INTO clients (name, visits) VALUES (?1, ?2)",
                    rusqlite::params![format!("w{i}"), n],
                )?;
                c.execute(
                    "UPDATE clients SET visits = visits + 1 WHERE id = (abs(random()) % ?1) + 1",
                    [n.max(1)],
                )?;
                if i.is_multiple_of(7) {
                    c.execute(
                        "DELETE FROM clients WHERE id = (SELECT min(id) FROM clients)",
                        [],
                    )?;
                }
                c.execute_batch("COMMIT")
            })();
            match tx {
                Ok(()) => ok += 1,
                Err(e) => {
                    let _ = c.execute_batch("ROLLBACK");
                    failed.push(format!("{}: {e}", paths[i % paths.len()].display()));
                }
            }
            i += 1;
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
        (ok, failed)
    })
}

/// Connections the daemon holds on Postgres right now. A connection it let go shows for a
/// moment more while its backend exits (idle, waiting for nothing): not counted.
fn daemon_connections(c: &mut postgres::Client) -> i64 {
    scalar(
        c,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sqlite2pg'
           AND datname = current_database() AND (state <> 'idle' OR wait_event IS NOT NULL)",
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

#[test]
fn one_daemon_follows_every_tenant_over_a_bounded_pool_through_kills_restarts_and_files_coming_and_going()
 {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    let shape = |i: usize| {
        if i.is_multiple_of(2) {
            "PRAGMA journal_mode = wal;
             CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, visits INTEGER DEFAULT 0);
             INSERT INTO clients (name) VALUES ('seed');"
        } else {
            "CREATE TABLE clients (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, visits INTEGER, note TEXT DEFAULT 'x');
             CREATE TABLE audit (at TEXT, what TEXT);
             INSERT INTO clients (name, visits) VALUES ('seed', 0);
             INSERT INTO audit VALUES ('t', 'keyless');"
        }
    };
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for i in 0..12 {
        let name = format!("t{i:02}");
        tenant_file(&tenants, &format!("{name}.db"), shape(i));
        files.push((name.clone(), tenants.join(format!("{name}.db"))));
    }
    let db = TestDb::new();
    let cfg = config(
        dir.path(),
        &db,
        &format!("files = {:?}", format!("{}/*.db", tenants.display())),
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let max = 5;
    let run_args = ["--max-connections", "5", "--metrics-addr", metrics.as_str()];
    let d = Daemon::start_fleet(&cfg, &db, &run_args);
    wait_all_caught_up(&files, &db, &d);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // t05's app is offboarded while its file goes away (below): none writes to it.
    let writers: Vec<_> = files
        .chunks(4)
        .map(|c| {
            let paths = c.iter().filter(|(n, _)| n != "t05").map(|(_, p)| p.clone());
            app_writer(paths.collect(), stop.clone())
        })
        .collect();
    let mut c = db.client();
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(daemon_connections(&mut c));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // kill -9 in the middle of the writes; the next daemon resumes every tenant.
    d.kill9();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let d = Daemon::start_fleet(&cfg, &db, &run_args);
    // A tenant that appears while the daemon runs, and one whose file goes away.
    tenant_file(&tenants, "t99.db", shape(0));
    files.push(("t99".into(), tenants.join("t99.db")));
    let away = dir.path().join("t05.db.away");
    std::fs::rename(tenants.join("t05.db"), &away).unwrap();
    d.wait_for_log("the tenant's file is gone");
    if own_cluster() {
        restart_cluster(std::time::Duration::from_millis(500));
    }
    for _ in 0..20 {
        most = most.max(daemon_connections(&mut db.client()));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        let (ok, failed) = w.join().unwrap();
        assert!(failed.is_empty(), "app transactions failed: {failed:?}");
        written += ok;
    }
    assert!(written > 100, "the app wrote {written} transactions");
    // t05 is paused while its file is away: back, it catches up with what it missed.
    std::fs::rename(&away, tenants.join("t05.db")).unwrap();
    sqlite3_shell(
        &tenants.join("t05.db"),
        "INSERT INTO clients (name) VALUES ('while away');",
    );
    wait_all_caught_up(&files, &db, &d);
    assert!(
        most <= max,
        "the daemon held {most} connections, over --max-connections {max}"
    );
    let mut c = db.client();
    for (name, path) in &files {
        c.batch_execute(&format!("SET search_path = tenant_{name}"))
            .unwrap();
        assert_table_equal(path, &mut c, "clients", "id");
    }
    let out = on_fleet(&cfg, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(phase_count(&status, "streaming"), 13, "{status:#}");
    let (_, scrape) = http_get(&metrics, "/metrics");
    assert_eq!(
        scrape.matches("sqlite2pg_tenant_phase{").count(),
        13,
        "one phase series per tenant:\n{scrape}"
    );
    assert!(
        scrape.contains("sqlite2pg_fleet_tenants{state=\"running\"} 13"),
        "{scrape}"
    );
    let log = d.log.clone();
    assert!(
        d.stop(),
        "the fleet's daemon stops cleanly:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
