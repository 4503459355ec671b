//! A fleet: many SQLite files, one per tenant, into one Postgres. This release lays a fleet
//! out (which files, each tenant's name and schema, checked for names Postgres would refuse,
//! cut or share) and checks it: each tenant's file into its own schema, one tenant's problem
//! named without hiding or stopping the others'.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A config file naming the fleet (`fleet` is the body of its `[fleet]` table) and the target.
fn config(dir: &Path, db: &TestDb, fleet: &str) -> PathBuf {
    let path = dir.join("fleet.toml");
    std::fs::write(
        &path,
        format!("target = {:?}\n\n[fleet]\n{fleet}\n", db.url),
    )
    .unwrap();
    path
}

fn on_fleet(cfg: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    sqlite2pg(&all)
}

fn tenant_file(dir: &Path, name: &str, sql: &str) {
    std::fs::create_dir_all(dir).unwrap();
    rusqlite::Connection::open(dir.join(name))
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

#[test]
fn check_takes_each_tenant_into_its_schema_and_names_the_ones_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    tenant_file(
        &tenants,
        "acme.db",
        "PRAGMA journal_mode = wal;
         CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         INSERT INTO clients VALUES (1, 'a'), (2, 'b');",
    );
    // Another shape, and a value no bigint holds.
    tenant_file(
        &tenants,
        "globex.db",
        "CREATE TABLE leads (id INTEGER PRIMARY KEY, qty INTEGER);
         INSERT INTO leads VALUES (1, 5), (2, 'many');",
    );
    tenant_file(
        &tenants,
        "initech.db",
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, done BOOLEAN, due DATETIME);
         INSERT INTO tasks VALUES (1, 0, '2024-01-01 10:00:00');",
    );
    std::fs::write(tenants.join("notes.txt"), "not a tenant").unwrap();
    let db = TestDb::new();
    let cfg = config(
        dir.path(),
        &db,
        &format!("files = {:?}", format!("{}/*.db*", tenants.display())),
    );

    // The layout, without touching either database: SQLite's -wal/-shm are not tenants.
    let out = on_fleet(&cfg, &["config", "check"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    for (name, schema) in [
        ("acme", "tenant_acme"),
        ("globex", "tenant_globex"),
        ("initech", "tenant_initech"),
    ] {
        assert!(
            listed.contains(&format!("tenant {name} = "))
                && listed.contains(&format!("-> schema {schema}")),
            "{listed}"
        );
    }
    assert_eq!(listed.matches("tenant ").count(), 3, "{listed}");

    let out = on_fleet(&cfg, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["clean"], 2, "{report:#}");
    let tenant = |name: &str| {
        report["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenant"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {report:#}"))
    };
    assert_eq!(tenant("acme")["outcome"], "checked");
    assert_eq!(tenant("acme")["report"]["errors"], 0);
    let globex = tenant("globex");
    assert_eq!(globex["schema"], "tenant_globex");
    assert!(
        globex["report"]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["table"] == "leads" && p["column"] == "qty"),
        "{globex:#}"
    );
    // Each tenant's mapping is its own file's.
    assert_eq!(tenant("initech")["report"]["tables"][0]["source"], "tasks");

    let out = on_fleet(&cfg, &["check"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("== tenant globex (")
            && said.contains("fleet: 2 of 3 tenant(s) clean; to fix first: globex"),
        "{said}"
    );
    // One tenant alone.
    let out = on_fleet(&cfg, &["--tenant", "acme", "check", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let one: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(one["tenants"].as_array().unwrap().len(), 1);
    let out = on_fleet(&cfg, &["--tenant", "umbrella", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--tenant umbrella: the fleet has no such tenant"),
        "{}",
        text(&out)
    );
    // What this release does not do for a fleet yet, it says, and touches nothing.
    let out = on_fleet(&cfg, &["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("follow one SQLite file per Postgres database"),
        "{}",
        text(&out)
    );
    let schemas: i64 = scalar(
        &mut db.client(),
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant_%' OR nspname = 'sqlite2pg'",
    );
    assert_eq!(schemas, 0);
}

#[test]
fn tenants_that_would_share_a_name_or_are_missing_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for region in ["eu", "us"] {
        tenant_file(
            &dir.path().join(region),
            "shop.db",
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, total NUMERIC(10,2));",
        );
    }
    let db = TestDb::new();
    let glob = format!(
        "files = {:?}",
        format!("{}/*/shop.db", dir.path().display())
    );
    let cfg = config(dir.path(), &db, &glob);
    let out = on_fleet(&cfg, &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("eu/shop.db")
            && said.contains("us/shop.db")
            && said.contains("both become the tenant 'shop'"),
        "{said}"
    );
    // Named by their directories, as the error advises.
    let cfg = config(
        dir.path(),
        &db,
        &format!("{glob}\nname = \"{{parent}}\"\nschema = \"shop_{{parent}}\""),
    );
    let out = on_fleet(&cfg, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<(&str, &str)> = report["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["tenant"].as_str().unwrap(), t["schema"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("eu", "shop_eu"), ("us", "shop_us")]);
    // A listed file that is not there is a tenant left out, never an emptied one.
    let listed = format!(
        "files = [{:?}, {:?}]",
        dir.path().join("eu/shop.db").display().to_string(),
        dir.path().join("gone/shop2.db").display().to_string()
    );
    let cfg = config(dir.path(), &db, &listed);
    let out = on_fleet(&cfg, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tenants"][1]["outcome"], "missing", "{report:#}");
    // A fleet and a --source at once is one too many.
    let out = on_fleet(&cfg, &["--source", "x.db", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
