//! The cutover fence is a lease: a cutover that is killed, interrupted or hangs gives the app
//! its SQLite writes back by itself, `status` shows the fence while it holds, `--abort` lifts
//! it at once, and a cutover after an aborted one completes, with Postgres equal to SQLite.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// An app write through the sqlite3 shell: Ok, or the error it got.
fn app_write(path: &Path) -> Result<(), String> {
    let out = Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(path)
        .arg("UPDATE counters SET hits = hits + 1 WHERE id = 1")
        .output()
        .expect("run sqlite3");
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out))
    }
}

/// Waits until the app can write to SQLite again; returns how long that took.
fn wait_writable(path: &Path, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        match app_write(path) {
            Ok(()) => return t0.elapsed(),
            Err(e) => {
                assert!(e.contains("moved to PostgreSQL"), "unexpected failure: {e}");
                assert!(
                    t0.elapsed() < limit,
                    "the app could not write within {limit:?}: {e}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cutover(path: &Path, db: &TestDb, extra: &[&str]) -> Child {
    let mut args = vec![
        "--source",
        path.to_str().unwrap(),
        "--target",
        &db.url,
        "cutover",
    ];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_sqlite2pg"))
        .args(&args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cutover")
}

fn recorded(db: &TestDb) -> bool {
    let n: i64 = scalar(&mut db.client(), "SELECT count(*) FROM sqlite2pg.cutover");
    n > 0
}

fn seeded() -> (tempfile::TempDir, std::path::PathBuf, TestDb, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    app(&["seed", path.to_str().unwrap(), "300", "wal"]);
    let db = TestDb::new();
    let mut d = Daemon::start(&path, &db, &[]);
    d.wait_caught_up();
    let out = sqlite2pg_on(&path, &db, &["verify"]);
    assert!(out.status.success(), "{}", text(&out));
    (dir, path, db, d)
}

#[test]
fn a_cutover_killed_at_20_random_moments_gives_writes_back_or_completes() {
    let (_dir, path, db, d) = seeded();
    let writer = start_writer(&path, 40.0, 50.0);
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill -9 seed: {seed}");
    let (mut kills, mut slowest) = (0, Duration::ZERO);
    while kills < 20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut c = cutover(&path, &db, &["--lease", "1.5"]);
        if seed.is_multiple_of(2) {
            // Before the fence: planning, the orphan count, the lag check.
            std::thread::sleep(Duration::from_millis(seed % 60));
        } else {
            // Inside the window (drain, verify, sequences, keys): right after the fence went
            // up; the last kill may land after the record.
            use std::io::BufRead;
            let err = std::io::BufReader::new(c.stderr.take().unwrap());
            for line in err.lines() {
                if line.map_or(true, |l| l.contains("SQLite writes fenced")) {
                    break;
                }
            }
            let spread = if kills == 19 { 60 } else { 4 };
            std::thread::sleep(Duration::from_millis(seed / 7 % spread));
        }
        let _ = c.kill();
        let _ = c.wait();
        if recorded(&db) {
            println!("the cutover was recorded before kill {}", kills + 1);
            break;
        }
        kills += 1;
        // Killed before the record: the lease lapses and the app writes SQLite again.
        slowest = slowest.max(wait_writable(&path, Duration::from_secs(10)));
    }
    println!("{kills} kills; the app wrote again at most {slowest:?} after each");
    assert!(
        slowest < Duration::from_secs(5),
        "a 1.5 s lease kept the app out for {slowest:?}"
    );
    if !recorded(&db) {
        // A cutover after killed ones completes.
        let out = cutover(&path, &db, &[]).wait_with_output().unwrap();
        assert!(out.status.success(), "cutover: {}", text(&out));
    }
    let st = status_json(&path, &db);
    assert_eq!(st["fence"]["permanent"], true, "{st}");
    let e = app_write(&path).expect_err("the fence is permanent after the record");
    assert!(e.contains("moved to PostgreSQL"), "{e}");
    d.wait_for_log("cut over: Postgres is the database now");
    let summary = writer_summary(writer);
    println!("app writer: {summary}");
    assert_app_equal(&path, &db);
}

#[test]
fn sigterm_lifts_the_fence_at_once_and_abort_lifts_a_dead_cutovers_fence() {
    let (_dir, path, db, d) = seeded();
    // A session holding a SHARE lock on the cutover record keeps the cutover inside its
    // window: the record's insert waits for it. (A lock on an app table now holds the cutover
    // before its fence: the capture on Postgres goes in there.)
    let mut reader = db.client();
    let lock = "BEGIN; LOCK TABLE sqlite2pg.cutover IN SHARE MODE";
    reader.batch_execute(lock).unwrap();
    let c = cutover(&path, &db, &[]);
    let t0 = Instant::now();
    loop {
        let st = status_json(&path, &db);
        if st["fence"]["active"] == true {
            let holder = st["fence"]["holder"].as_str().unwrap().to_string();
            assert!(holder.contains(&format!("pid {}", c.id())), "{st}");
            assert!(st["fence"]["until_unix"].as_f64().unwrap() > 0.0);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no fence: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let human = sqlite2pg_on(&path, &db, &["status"]);
    assert!(text(&human).contains("fence:      UP"), "{}", text(&human));
    // Renewed while the cutover waits: still up past its 5 s lease.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        app_write(&path).is_err(),
        "the live cutover renews its lease"
    );
    // SIGTERM: the fence goes at once, and the exit says why.
    let term = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = c.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("interrupted"), "{}", text(&out));
    assert!(wait_writable(&path, Duration::from_secs(10)) < Duration::from_secs(1));
    reader.batch_execute("ROLLBACK").unwrap();
    assert!(!recorded(&db));

    // kill -9 inside the window: `cutover --abort` lifts the fence without waiting for the lease.
    reader.batch_execute(lock).unwrap();
    let mut c = cutover(&path, &db, &["--lease", "60"]);
    let t0 = Instant::now();
    while status_json(&path, &db)["fence"]["active"] != true {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
    assert!(
        app_write(&path).is_err(),
        "the lease of a killed cutover still holds"
    );
    let out = sqlite2pg_on(&path, &db, &["cutover", "--abort"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("fence lifted"), "{}", text(&out));
    app_write(&path).expect("the app writes right after --abort");

    // A cutover after the aborted ones completes; --abort is refused after the record.
    reader.batch_execute("ROLLBACK").unwrap();
    let out = cutover(&path, &db, &[]).wait_with_output().unwrap();
    assert!(out.status.success(), "cutover: {}", text(&out));
    let out = sqlite2pg_on(&path, &db, &["cutover", "--abort"]);
    assert!(!out.status.success(), "--abort after the record is refused");
    assert_app_equal(&path, &db);
    drop(d);
}
