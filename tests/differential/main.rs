//! The differential tester: random SQLite apps (schema, workload, faults) run against the real
//! daemon, both databases compared after every step. In the spirit of SQLancer (random
//! schemas and statements, an oracle of our own) and Jepsen (faults, an invariant read while
//! the system is under them).
//!
//! - `random_apps_agree_on_both_sides`: as many random apps as fit in
//!   `SQLITE2PG_DIFF_SECONDS` (60), from `SQLITE2PG_DIFF_SEED` (the clock when unset; printed).
//!   A failure prints the seed and the scenario, then shrinks it to a minimal one
//!   (`SQLITE2PG_DIFF_SHRINK_SECONDS`, 240) and writes it to a `.case` file to keep.
//!   `SQLITE2PG_DIFF_DUMP=DIR` writes every scenario run there.
//! - `random_apps_agree_on_both_sides_as_tenants_of_one_fleet`: the same apps, three at a
//!   time as the tenants of one fleet daemon (`SQLITE2PG_DIFF_FLEET_SECONDS`, 40).
//! - `random_apps_of_one_schema_agree_as_tenants_of_shared_tables`: three apps of one schema
//!   as the tenants of a fleet's shared tables (`SQLITE2PG_DIFF_SHARED_SECONDS`, 30).
//! - `found_cases_stay_fixed`: every case in `tests/differential/cases/` (or in
//!   `SQLITE2PG_DIFF_CASES`).
//!
//! `bench/soak HOURS` runs the first for hours and writes its figures to a JSON report.

mod apps;
#[path = "../common/mod.rs"]
mod common;
mod oracle;
mod run;
mod scenario;
mod shrink;

use std::time::{Duration, Instant};

use scenario::Scenario;

/// The tests restart the cluster: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `SQLITE2PG_DIFF_SEED`, or the clock.
fn seed() -> u64 {
    env_u64("SQLITE2PG_DIFF_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    })
}

/// Steps per app: enough for schema changes and faults to meet, few enough for many apps.
const STEPS: usize = 24;

#[test]
fn random_apps_agree_on_both_sides() {
    let _one = serial();
    let budget = Duration::from_secs(env_u64("SQLITE2PG_DIFF_SECONDS").unwrap_or(60));
    let seed = seed();
    println!("differential: seed {seed} (SQLITE2PG_DIFF_SEED={seed} repeats this run)");
    let restarts = common::own_cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let (mut apps, mut steps, mut statements, mut faults, mut reads, mut refused) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut rss, mut lag, mut moves) = (0u64, 0u64, 0u64);
    while apps == 0 || started.elapsed() < budget {
        let app_seed = seed.wrapping_add(apps);
        let s = apps::scenario(app_seed, STEPS, restarts);
        if let Ok(dump) = std::env::var("SQLITE2PG_DIFF_DUMP") {
            let _ = std::fs::write(format!("{dump}/{app_seed}.case"), s.to_string());
        }
        let out = run::run(&s, dir.path());
        if let Some(failure) = &out.failure {
            fail(app_seed, &s, failure);
        }
        apps += 1;
        steps += out.checks as u64;
        statements += s.statements() as u64;
        faults += out.faults as u64;
        reads += out.bank_reads;
        refused += out.refused as u64;
        moves += out.moves as u64;
        rss = rss.max(out.max_rss_kib);
        lag = lag.max(out.max_catch_up_ms);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "differential: {apps} random apps ({moves} moved to Postgres and back), {steps} checked \
         steps, {statements} statements ({refused} transactions refused by the database), \
         {faults} faults, {reads} bank reads \
         on Postgres, 0 divergences, in {secs:.0} s; daemon RSS at most {rss} KiB; longest \
         catch-up after a step {lag} ms"
    );
    if let Ok(path) = std::env::var("SQLITE2PG_DIFF_REPORT") {
        let report = serde_json::json!({
            "seed": seed, "seconds": secs, "apps": apps, "moves": moves, "checked_steps": steps,
            "statements": statements, "refused_transactions": refused, "faults": faults,
            "bank_reads": reads, "divergences": 0, "max_daemon_rss_kib": rss,
            "max_catch_up_ms": lag,
        });
        std::fs::write(&path, report.to_string()).expect("write the report");
    }
}

/// Prints what failed and where, shrinks it, keeps the minimal case, and fails the test.
fn fail(seed: u64, s: &Scenario, failure: &str) -> ! {
    println!("differential: app seed {seed} FAILED:\n{failure}\n--- scenario ---\n{s}");
    let budget = Duration::from_secs(env_u64("SQLITE2PG_DIFF_SHRINK_SECONDS").unwrap_or(240));
    let dir = tempfile::tempdir().expect("temp dir");
    let kind = run::kind(failure);
    let small = shrink::shrink(s, budget, |c| {
        run::run(c, dir.path())
            .failure
            .is_some_and(|f| run::kind(&f) == kind)
    });
    let again = run::run(&small, dir.path()).failure.unwrap_or_default();
    let file = std::env::temp_dir().join(format!("sqlite2pg-differential-{seed}.case"));
    let kept = format!(
        "# found by seed {seed}\n# {}\n{small}",
        again.lines().next().unwrap_or("")
    );
    let _ = std::fs::write(&file, &kept);
    panic!(
        "app seed {seed} diverged (SQLITE2PG_DIFF_SEED={seed} runs it first): {failure}\n\nshrunk to ({} items, written to {}; copy it to \
         tests/differential/cases/ once fixed):\n{small}\nwhich fails with:\n{again}",
        small.items.len(),
        file.display()
    );
}

/// Apps per fleet: enough for their wake-ups, sessions and faults to meet.
const FLEET_APPS: u64 = 3;

/// Random apps as the tenants of one fleet, one daemon following them all over one pooled
/// session: each app's items in turn with the others', each checked on its own, the faults
/// falling on all of them.
/// `SQLITE2PG_DIFF_FLEET_SECONDS` (40) and the same seed as above. Not shrunk: a failure
/// prints every app's scenario and seed, and an app that fails alone shrinks above.
#[test]
fn random_apps_agree_on_both_sides_as_tenants_of_one_fleet() {
    fleets_of_random_apps(false, "SQLITE2PG_DIFF_FLEET_SECONDS", 40);
}

/// The same in a fleet's shared tables: apps of one random schema whose rows share each
/// table, told apart by the tenant column (their ids and unique values collide on purpose).
/// No schema change (a tenant whose tables differ waits for a person) and no app triggers
/// (not carried onto shared tables); a move is a one-way cutover.
/// `SQLITE2PG_DIFF_SHARED_SECONDS` (30).
#[test]
fn random_apps_of_one_schema_agree_as_tenants_of_shared_tables() {
    fleets_of_random_apps(true, "SQLITE2PG_DIFF_SHARED_SECONDS", 30);
}

/// Fleets of `FLEET_APPS` random apps, one after another until the budget (`budget_env`,
/// `default_secs`) is spent; `shared`: in the shared-tables layout.
fn fleets_of_random_apps(shared: bool, budget_env: &str, default_secs: u64) {
    let _one = serial();
    let budget = Duration::from_secs(env_u64(budget_env).unwrap_or(default_secs));
    let seed = seed();
    let what = if shared {
        "differential shared fleet"
    } else {
        "differential fleet"
    };
    println!("{what}: seed {seed} (SQLITE2PG_DIFF_SEED={seed} repeats this run)");
    let restarts = common::own_cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let (mut fleets, mut steps, mut faults, mut moves) = (0u64, 0u64, 0u64, 0u64);
    while fleets == 0 || started.elapsed() < budget {
        let first = seed.wrapping_add(fleets * FLEET_APPS);
        let (seeds, scenarios): (Vec<u64>, Vec<Scenario>) = if shared {
            let apps = apps::shared_scenarios(first, FLEET_APPS, STEPS, restarts);
            (vec![first; apps.len()], apps)
        } else {
            (0..FLEET_APPS)
                .map(|i| {
                    let s = first.wrapping_add(i);
                    (s, apps::scenario(s, STEPS, restarts))
                })
                .unzip()
        };
        let out = run::run_fleet(&scenarios, dir.path(), shared);
        if let Some(failure) = &out.failure {
            let apps: Vec<String> = seeds
                .iter()
                .zip(&scenarios)
                .enumerate()
                .map(|(i, (seed, s))| format!("--- app {i} (app seed {seed}) ---\n{s}"))
                .collect();
            panic!(
                "a fleet of apps diverged (SQLITE2PG_DIFF_SEED={seed} runs it first): {failure}\n\n{}",
                apps.join("\n")
            );
        }
        fleets += 1;
        steps += out.checks as u64;
        faults += out.faults as u64;
        moves += out.moves as u64;
    }
    let moved = if shared {
        "cut over one way"
    } else {
        "moved to Postgres and back"
    };
    println!(
        "{what}: {fleets} fleets of {FLEET_APPS} random apps ({moves} {moved}), {steps} checked \
         steps, {faults} faults, 0 divergences, in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn found_cases_stay_fixed() {
    let _one = serial();
    // SQLITE2PG_DIFF_CASES=DIR replays the cases of another directory (a shrunk one, say).
    let dir = std::env::var_os("SQLITE2PG_DIFF_CASES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential/cases")
        });
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/differential/cases")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", dir.display());
    let work = tempfile::tempdir().expect("temp dir");
    let mut failed = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case).expect("read case");
        let s = Scenario::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let out = run::run(&s, work.path());
        println!(
            "{}: {} checks, {} transactions refused",
            case.display(),
            out.checks,
            out.refused
        );
        if let Some(f) = out.failure {
            failed.push(format!("{}: {f}", case.display()));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
