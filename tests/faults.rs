//! Faults around the daemon. This binary has the test cluster to itself, because it restarts it.

mod common;

use common::*;

#[test]
fn postgres_restarting_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    app(&["seed", path.to_str().unwrap(), "300", "wal"]);
    let db = TestDb::new();
    let mut d = Daemon::start(&path, &db, &[]);
    d.wait_caught_up();
    let writer = start_writer(&path, 8.0, 100.0);
    std::thread::sleep(std::time::Duration::from_secs(2));
    restart_cluster(std::time::Duration::from_secs(3));
    let summary = finish_writer(writer);
    println!("app writer across the restart: {summary}");
    d.wait_caught_up();
    assert_app_equal(&path, &db);
    let log = d.log_text();
    assert!(
        log.contains("resuming"),
        "the daemon should say it reconnected:\n{log}"
    );
    assert!(d.stop());
}
