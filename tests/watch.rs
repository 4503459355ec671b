//! `status --watch`: what a person sees on a terminal (tmux, read back with capture-pane) and
//! what a pipe gets, while the app writes, through a cutover; and the warning a one-shot copy
//! leaves in `status`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn tmux(socket: &str, args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(["-L", socket, "-f", "/dev/null"])
        .args(args)
        .output()
        .expect("tmux is missing: apt-get install tmux (scripts/test installs it)");
    assert!(out.status.success(), "tmux {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pane's text as a person sees it now, with whatever scrolled off above it (so a view
/// that scrolls instead of redrawing shows twice; and tmux scrolls a line up to say the pane
/// died).
fn screen(socket: &str) -> String {
    tmux(socket, &["capture-pane", "-p", "-S", "-", "-t", "watch"])
        .trim_start_matches('\n')
        .to_string()
}

fn wait_screen(socket: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = screen(socket);
        if ready(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what}; the screen:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Tmux(String);

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

#[test]
fn watch_on_a_terminal_redraws_in_place_while_the_app_writes_and_ends_after_the_cutover() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    app(&["seed", path.to_str().unwrap(), "300", "wal"]);
    let db = TestDb::new();
    let mut d = Daemon::start(&path, &db, &[]);
    d.wait_caught_up();
    let writer = start_writer(&path, 8.0, 50.0);

    let socket = format!("sqlite2pg-watch-{}", std::process::id());
    let _server = Tmux(socket.clone());
    // The exit status goes to a file: tmux, under load, may see the pane's terminal close
    // and never report how its process ended.
    let exit_file = dir.path().join("watch.exit");
    let cmd = format!(
        "'{}' --source '{}' --target '{}' status --watch --interval 0.3; echo $? > '{f}.tmp' && mv '{f}.tmp' '{f}'",
        env!("CARGO_BIN_EXE_sqlite2pg"),
        path.display(),
        db.url,
        f = exit_file.display()
    );
    tmux(
        &socket,
        &["new-session", "-d", "-s", "watch", "-x", "150", "-y", "40"],
    );
    tmux(
        &socket,
        &["set-window-option", "-t", "watch", "remain-on-exit", "on"],
    );
    tmux(&socket, &["respawn-pane", "-k", "-t", "watch", &cmd]);

    // A person sees the phase, the fence, the lag with its history, the throughput while
    // the app writes, and every table.
    let s = wait_screen(&socket, "changes applied per second above 0", |s| {
        s.lines().any(|l| {
            l.starts_with("applied:")
                && l.split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<f64>().ok())
                    .is_some_and(|n| n > 0.0)
        })
    });
    assert!(
        s.contains("phase: streaming  (daemon running)"),
        "screen:\n{s}"
    );
    assert!(
        s.contains("fence:     none (the app writes to SQLite)"),
        "screen:\n{s}"
    );
    assert!(s.lines().any(|l| l.starts_with("lag:")), "screen:\n{s}");
    assert!(s.contains("errors:    none"), "screen:\n{s}");
    for t in ["counters", "memberships", "projects", "tasks", "user"] {
        assert!(
            s.lines()
                .any(|l| l.starts_with(&format!("table {t} ")) && l.contains("ready")),
            "table {t} missing; screen:\n{s}"
        );
    }
    // Redrawn in place: after several looks, the view is on the screen once, at the top.
    std::thread::sleep(Duration::from_millis(1500));
    let s = screen(&socket);
    assert_eq!(
        s.matches("sqlite2pg  phase:").count(),
        1,
        "the view scrolled instead of redrawing:\n{s}"
    );
    assert!(s.starts_with("sqlite2pg  phase:"), "screen:\n{s}");
    finish_writer(writer);

    // The cutover shows, with the reverse stream's lag while the daemon follows Postgres
    // back; the view ends by itself once nothing can change any more (the daemon stopped).
    let out = sqlite2pg_on(&path, &db, &["cutover"]);
    assert!(out.status.success(), "{}", text(&out));
    d.wait_for_log("following Postgres back into SQLite");
    wait_until("the reverse lag on screen", Duration::from_secs(20), || {
        screen(&socket).contains("on Postgres not yet in SQLite")
    });
    assert!(d.stop(), "the daemon should stop cleanly on SIGTERM");
    wait_until(
        "the watch ending after the cutover",
        Duration::from_secs(30),
        || exit_file.exists(),
    );
    let exit = std::fs::read_to_string(&exit_file).unwrap();
    assert_eq!(exit.trim(), "0", "the watch failed:\n{}", screen(&socket));
    let s = screen(&socket);
    assert!(s.contains("phase: cut_over"), "screen:\n{s}");
    assert!(
        s.contains("fence:     permanent: SQLite refuses writes (cut over)"),
        "screen:\n{s}"
    );
}

#[test]
fn watch_through_a_pipe_prints_plain_lines_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    app(&["seed", path.to_str().unwrap(), "200", "wal"]);
    let db = TestDb::new();
    let mut d = Daemon::start(&path, &db, &[]);
    d.wait_caught_up();
    let out_path = dir.path().join("watch.out");
    let mut watch = Command::new(env!("CARGO_BIN_EXE_sqlite2pg"))
        .args([
            "--source",
            path.to_str().unwrap(),
            "--target",
            &db.url,
            "status",
            "--watch",
            "--interval",
            "0.2",
        ])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let writer = start_writer(&path, 3.0, 50.0);
    finish_writer(writer);
    let (status, took) = sigterm(&mut watch);
    assert!(status.success(), "the watch failed: {status}");
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    d.stop();
    let out = std::fs::read_to_string(&out_path).unwrap();
    assert!(
        !out.contains('\x1b'),
        "terminal codes in piped output:\n{out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 10, "too few looks:\n{out}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("phase=streaming daemon=running fence=none lag_s=")),
        "{out}"
    );
    let rates: Vec<f64> = lines
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("applied_per_s="))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    assert!(
        rates.iter().any(|r| *r > 0.0),
        "no throughput while the app wrote:\n{out}"
    );
}

#[test]
fn a_one_shot_copy_says_capture_stays_and_status_shows_the_growing_changelog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    gen_crm(&path, 500);
    let db = TestDb::new();
    let out = sqlite2pg_on(&path, &db, &["run", "--snapshot-only"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("capture stays installed") && err.contains("sqlite2pg uninstall"),
        "no warning at exit:\n{err}"
    );
    sqlite3_shell(
        &path,
        "INSERT INTO leads (name, created_at) VALUES ('a', '2026-01-01'), ('b', '2026-01-01');
         UPDATE clients SET notes = 'x' WHERE id = 1;",
    );
    let out = sqlite2pg_on(&path, &db, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .find(|l| l.starts_with("capture:"))
        .unwrap_or_else(|| panic!("no capture warning in status:\n{s}"));
    assert!(line.contains("(3 changes not applied)"), "{line}");
    let out = sqlite2pg_on(&path, &db, &["uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = sqlite2pg_on(&path, &db, &["status"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("capture:    not installed"), "{s}");
    assert!(!s.contains("grows"), "warning after uninstall:\n{s}");
}

/// A Postgres that accepts the connection and never answers holds the connect forever:
/// Ctrl-C (SIGTERM here) must still end the watch at once.
#[test]
fn watch_stops_at_once_while_postgres_hangs_the_connect() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    gen_crm(&path, 100);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!(
        "postgres://app:pw-Hidden-7@127.0.0.1:{}/crm?sslmode=disable",
        silent.local_addr().unwrap().port()
    );
    let mut watch = Command::new(env!("CARGO_BIN_EXE_sqlite2pg"))
        .args([
            "--source",
            path.to_str().unwrap(),
            "--target",
            &target,
            "status",
            "--watch",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The connection is accepted (and then left unanswered).
    let (_held, _) = silent.accept().unwrap();
    let (status, took) = sigterm(&mut watch);
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    let out = watch.wait_with_output().unwrap();
    assert!(!text(&out).contains("pw-Hidden-7"), "{}", text(&out));
}

/// From the moment the daemon takes the run lock until it is stopped, it never lets go: the
/// snapshot's connection goes on as the stream's, so `status` and a cutover never see
/// `daemon=none` in between (CI once did, in the test above). A second `run` on the same
/// target is refused while the first one runs.
#[test]
fn the_daemon_holds_the_run_lock_from_the_snapshot_to_its_stop_and_a_second_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    app(&["seed", path.to_str().unwrap(), "2000", "wal"]);
    let db = TestDb::new();
    let mut d = Daemon::start(&path, &db, &[]);
    let url = db.url.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watching = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let held = |c: &mut postgres::Client| -> bool {
                c.query_one(
                    "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND objid = 1 AND objsubid = 2 AND granted",
                    &[],
                )
                .unwrap()
                .get(0)
            };
            let start = Instant::now();
            while !held(&mut c) {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "the daemon never took the run lock"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let (mut looks, mut gone) = (0u64, 0u64);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                looks += 1;
                if !held(&mut c) {
                    gone += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (looks, gone)
        })
    };
    d.wait_caught_up();
    std::thread::sleep(Duration::from_millis(500));
    let second = sqlite2pg_on(&path, &db, &["run"]);
    assert!(
        !second.status.success(),
        "a second run was let in:\n{}",
        text(&second)
    );
    assert!(
        text(&second).contains("another sqlite2pg run is working on this Postgres database"),
        "{}",
        text(&second)
    );
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (looks, gone) = watching.join().unwrap();
    assert!(looks > 100, "too few looks at the lock: {looks}");
    assert_eq!(
        gone,
        0,
        "the run lock was free {gone} times in {looks} looks while the daemon ran:\n{}",
        d.log_text()
    );
    assert!(d.stop(), "the daemon did not stop cleanly");
}
