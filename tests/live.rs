//! The bot keeps writing through SQLAlchemy while `run` snapshots and streams: no app
//! transaction fails, and Postgres ends equal to SQLite, also after kill -9 at random moments.

mod common;

use common::*;

fn seeded(journal: &str, projects: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    app(&["seed", path.to_str().unwrap(), projects, journal]);
    (dir, path)
}

fn app_writes_while_run_snapshots_and_streams(journal: &str, alembic: bool) {
    let (_dir, path) = seeded(journal, "1500");
    let db = TestDb::new();
    if alembic {
        app(&["alembic", &db.url]);
    }
    let writer = start_writer(&path, 8.0, 100.0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Small chunks, so that the snapshot runs while the app writes.
    let mut d = Daemon::start(&path, &db, &["--chunk-rows", "300"]);
    let summary = finish_writer(writer);
    println!("journal={journal} app writer: {summary}");
    d.wait_caught_up();
    assert_app_equal(&path, &db);
    let log = d.log.clone();
    assert!(
        d.stop(),
        "SIGTERM should stop the daemon with exit 0:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn app_writes_while_run_snapshots_and_streams_in_wal_mode_into_an_alembic_schema() {
    app_writes_while_run_snapshots_and_streams("wal", true);
}

#[test]
fn app_writes_while_run_snapshots_and_streams_in_rollback_journal_mode() {
    app_writes_while_run_snapshots_and_streams("delete", false);
}

#[test]
fn kill_9_at_20_random_moments_while_the_app_writes() {
    let (_dir, path) = seeded("wal", "3000");
    let db = TestDb::new();
    let writer = start_writer(&path, 20.0, 100.0);
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill -9 seed: {seed}");
    for _ in 0..22 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let d = Daemon::start(&path, &db, &["--chunk-rows", "300"]);
        std::thread::sleep(std::time::Duration::from_millis(150 + seed % 600));
        d.kill9();
    }
    let mut d = Daemon::start(&path, &db, &["--chunk-rows", "300"]);
    let summary = finish_writer(writer);
    println!("app writer during 22 kills: {summary}");
    d.wait_caught_up();
    // Counters only ever grow by one: a change applied twice or lost would show here.
    assert_app_equal(&path, &db);
    assert!(d.stop());
}
