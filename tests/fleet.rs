//! A fleet: many SQLite files, one per tenant, into one Postgres. The fleet is laid out
//! (which files, each tenant's name and schema, checked for names Postgres would refuse, cut
//! or share) and checked, each tenant's file into its own schema, one tenant's problem named
//! without hiding or stopping the others'. Each tenant then moves on its own: its own run,
//! state, cutover, fallback and uninstall, while the others stream on in the same Postgres.

mod common;

use std::path::PathBuf;

use common::fleet::*;
use common::*;

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
    // A command about one tenant says so, and touches nothing.
    let out = on_fleet(&cfg, &["verify"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("give --tenant NAME"), "{}", text(&out));
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

#[test]
fn each_tenant_streams_cuts_over_falls_back_and_uninstalls_alone_beside_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    // Same table names in two tenants (their ids overlap), another shape in the third.
    for name in ["acme.db", "globex.db"] {
        tenant_file(
            &tenants,
            name,
            "PRAGMA journal_mode = wal;
             CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, visits INTEGER DEFAULT 0);
             CREATE TABLE notes (client_id INTEGER REFERENCES clients(id), body TEXT);
             INSERT INTO clients (name) VALUES ('a'), ('b'), ('c');
             INSERT INTO notes VALUES (1, 'first'), (2, 'second');",
        );
    }
    tenant_file(
        &tenants,
        "initech.db",
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT);
         INSERT INTO tasks VALUES (1, 'later');",
    );
    let (acme, globex) = (tenants.join("acme.db"), tenants.join("globex.db"));
    let db = TestDb::new();
    let cfg = glob_config(dir.path(), &db, &tenants);
    let mut a = Daemon::start_tenant(&cfg, "acme", &acme, &db);
    let mut g = Daemon::start_tenant(&cfg, "globex", &globex, &db);
    a.wait_caught_up();
    g.wait_caught_up();
    sqlite3_shell(
        &acme,
        "INSERT INTO clients (name) VALUES ('acme only'); UPDATE clients SET visits = 7 WHERE id = 1;",
    );
    sqlite3_shell(
        &globex,
        "DELETE FROM notes WHERE client_id = 2; UPDATE clients SET name = 'g' WHERE id = 2;",
    );
    a.wait_caught_up();
    g.wait_caught_up();
    let mut c = db.client();
    for (tenant, path) in [("acme", &acme), ("globex", &globex)] {
        c.batch_execute(&format!("SET search_path = tenant_{tenant}"))
            .unwrap();
        assert_table_equal(path, &mut c, "clients", "id");
        let out = on_fleet(&cfg, &["--tenant", tenant, "verify"]);
        assert!(out.status.success(), "verify {tenant}: {}", text(&out));
    }
    // Every state row names its tenant; the third one has none yet.
    let streams = pg_rows(&mut c, "SELECT tenant FROM sqlite2pg.stream ORDER BY 1");
    assert_eq!(
        streams,
        [[Some("acme".to_string())], [Some("globex".to_string())]]
    );
    let status = fleet_status(&cfg);
    assert_eq!(phase_count(&status, "streaming"), 2, "{status:#}");
    assert_eq!(phase_count(&status, "not_started"), 1, "{status:#}");
    assert_eq!(status["tenants"][0]["status"]["daemon_running"], true);
    assert_eq!(status["tenants"][2]["status"]["daemon_running"], false);

    // acme cuts over alone; its hook learns which tenant it points at Postgres.
    let (hook, hook_out) = tenant_hook(dir.path());
    let out = on_fleet(&cfg, &["--tenant", "acme", "cutover", "--exec", &hook]);
    assert!(out.status.success(), "cutover acme: {}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&hook_out).unwrap().trim(),
        "acme tenant_acme"
    );
    // acme's foreign keys are on Postgres now, and globex's are not: its app leaves them off
    // in SQLite, so a client it deletes leaves its notes (a key on Postgres would refuse the
    // delete, or cascade it where SQLite did not).
    let mut c = db.client();
    let fks = |c: &mut postgres::Client, schema: &str| -> i64 {
        scalar(
            c,
            &format!(
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = '{schema}'::regnamespace"
            ),
        )
    };
    assert_eq!(
        fks(&mut c, "tenant_acme"),
        1,
        "acme's key is added by its cutover"
    );
    assert_eq!(
        fks(&mut c, "tenant_globex"),
        0,
        "globex's keys wait for its own cutover"
    );
    sqlite3_shell(
        &globex,
        "INSERT INTO clients (id, name) VALUES (50, 'gone soon'); INSERT INTO notes VALUES (50, 'left');
         DELETE FROM clients WHERE id = 50;",
    );
    g.wait_caught_up();
    let orphans: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM tenant_globex.notes WHERE client_id = 50",
    );
    assert_eq!(orphans, 1, "globex's orphan note stays, as in SQLite");
    // Its app tidies up, as it must before its own cutover.
    sqlite3_shell(&globex, "DELETE FROM notes WHERE client_id = 50;");
    // acme's SQLite is fenced; globex's app writes on, and globex streams on.
    let refused = std::process::Command::new("sqlite3")
        .arg(&acme)
        .arg("INSERT INTO clients (name) VALUES ('too late');")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "acme's SQLite is fenced");
    sqlite3_shell(
        &globex,
        "INSERT INTO clients (name) VALUES ('after acme moved');",
    );
    g.wait_caught_up();
    c.batch_execute("SET search_path = tenant_globex").unwrap();
    assert_table_equal(&globex, &mut c, "clients", "id");
    // The app of acme now writes on Postgres; acme's daemon follows it back into acme's
    // file, and nothing of globex's schema is captured.
    c.batch_execute(
        "INSERT INTO tenant_acme.clients (id, name) VALUES (100, 'written on postgres');
         UPDATE tenant_globex.clients SET visits = 1 WHERE id = 1;",
    )
    .unwrap();
    wait_until(
        "acme's write on Postgres to reach its SQLite file",
        std::time::Duration::from_secs(30),
        || sqlite_rows(&acme, "SELECT name FROM clients WHERE id = 100") == ["written on postgres"],
    );
    let captured: Vec<Vec<Option<String>>> = pg_rows(
        &mut c,
        "SELECT DISTINCT tenant FROM sqlite2pg.reverse_change",
    );
    assert_eq!(captured, [[Some("acme".to_string())]]);
    let status = fleet_status(&cfg);
    assert_eq!(phase_count(&status, "cut_over"), 1, "{status:#}");
    assert_eq!(phase_count(&status, "streaming"), 1, "{status:#}");

    // acme falls back alone; the fence on Postgres is acme's only.
    let out = on_fleet(&cfg, &["--tenant", "acme", "fallback"]);
    assert!(out.status.success(), "fallback acme: {}", text(&out));
    assert!(a.stop(), "acme's daemon ends once fallen back");
    let refused = c.batch_execute("INSERT INTO tenant_acme.clients (id, name) VALUES (101, 'x')");
    assert!(refused.is_err(), "acme's tables on Postgres are fenced");
    c.batch_execute("UPDATE tenant_globex.clients SET visits = 2 WHERE id = 1")
        .expect("globex's tables are not fenced");
    sqlite3_shell(
        &acme,
        "INSERT INTO clients (name) VALUES ('back on sqlite');",
    );
    let status = fleet_status(&cfg);
    assert_eq!(phase_count(&status, "fell_back"), 1, "{status:#}");

    // acme's uninstall takes its state and triggers, and leaves globex's.
    let out = on_fleet(&cfg, &["--tenant", "acme", "uninstall"]);
    assert!(out.status.success(), "uninstall acme: {}", text(&out));
    c.batch_execute("INSERT INTO tenant_acme.clients (id, name) VALUES (102, 'writable again')")
        .expect("acme's tables are writable once uninstalled");
    let left = pg_rows(
        &mut c,
        "SELECT tenant FROM sqlite2pg.stream UNION ALL SELECT name FROM sqlite2pg.tenant ORDER BY 1",
    );
    assert_eq!(
        left,
        [[Some("globex".to_string())], [Some("globex".to_string())]]
    );
    sqlite3_shell(&globex, "UPDATE clients SET visits = visits + 1;");
    g.wait_caught_up();
    let out = on_fleet(&cfg, &["--tenant", "globex", "verify"]);
    assert!(out.status.success(), "verify globex: {}", text(&out));
    // The last tenant's uninstall takes the state schema.
    assert!(g.stop());
    let out = on_fleet(&cfg, &["--tenant", "globex", "cutover"]);
    assert!(out.status.success(), "cutover globex: {}", text(&out));
    let out = on_fleet(&cfg, &["--tenant", "globex", "uninstall"]);
    assert!(out.status.success(), "uninstall globex: {}", text(&out));
    let state: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'sqlite2pg'",
    );
    assert_eq!(state, 0);
}

/// Two tenants whose tables share names but not columns take turns on the one session the
/// pool has for tenants: each write hands it from one to the other, and neither is served
/// by the other's staging tables, locks or anything else of its session.
#[test]
fn tenants_of_different_shapes_take_turns_on_one_pooled_session() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    tenant_file(
        &tenants,
        "a.db",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE tags (item_id INTEGER, tag TEXT);",
    );
    tenant_file(
        &tenants,
        "b.db",
        "PRAGMA journal_mode = wal;
         CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL, note TEXT, name TEXT);
         CREATE TABLE tags (item_id INTEGER, tag TEXT, weight REAL);",
    );
    let (a, b) = (tenants.join("a.db"), tenants.join("b.db"));
    let db = TestDb::new();
    let cfg = glob_config(dir.path(), &db, &tenants);
    // Two connections are the daemon's own (the listener, the presence locks): one is left.
    let d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "3"]);
    let wait = |path: &PathBuf, name: &str| {
        wait_tenant_caught_up(path, &db.url, name, std::time::Duration::from_secs(30))
    };
    wait(&a, "a");
    wait(&b, "b");
    let mut c = db.client();
    let mut backends = std::collections::BTreeSet::new();
    for i in 0..15 {
        rusqlite::Connection::open(&a)
            .unwrap()
            .execute_batch(&format!(
                "INSERT INTO items (name) VALUES ('a{i}'); INSERT INTO tags VALUES ({i}, 'x');"
            ))
            .unwrap();
        wait(&a, "a");
        rusqlite::Connection::open(&b)
            .unwrap()
            .execute_batch(&format!(
                "INSERT INTO items (qty, note, name) VALUES ({i}, 'n', 'b{i}');
                 INSERT INTO tags VALUES ({i}, 'y', 0.5); UPDATE items SET qty = qty + 1 WHERE id = 1;"
            ))
            .unwrap();
        wait(&b, "b");
        for r in pg_rows(
            &mut c,
            "SELECT pid::text FROM pg_stat_activity WHERE application_name = 'sqlite2pg'
               AND datname = current_database()",
        ) {
            backends.extend(r.into_iter().flatten());
        }
    }
    for (tenant, path) in [("a", &a), ("b", &b)] {
        c.batch_execute(&format!("SET search_path = tenant_{tenant}"))
            .unwrap();
        assert_table_equal(path, &mut c, "items", "id");
        let out = on_fleet(&cfg, &["--tenant", tenant, "verify"]);
        assert!(out.status.success(), "verify {tenant}: {}", text(&out));
    }
    let log = d.log_text();
    assert!(
        !log.contains(" ERROR ") && !log.contains(" WARN "),
        "the daemon's log:\n{log}"
    );
    // 30 hand-offs, each once a new connection: the same three backends all along.
    assert!(
        backends.len() <= 3,
        "the daemon used {} backends for 30 hand-offs of one session: {backends:?}",
        backends.len()
    );
}

/// A fleet's tenants make their first pass (the plan, the snapshot) on the pool's sessions,
/// handed from tenant to tenant: each one opened a connection of its own before, a backend
/// forked with cold caches for every tenant's DDL.
#[test]
fn a_fleets_first_passes_take_the_pools_sessions_rather_than_a_connection_each() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    let n = 12;
    for i in 0..n {
        tenant_file(
            &tenants,
            &format!("t{i:02}.db"),
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO items (name) VALUES ('a'), ('b');",
        );
    }
    let db = TestDb::new();
    let cfg = glob_config(dir.path(), &db, &tenants);
    // Every session counted from here on is the daemon's but this one.
    let mut c = db.client();
    let sessions = |c: &mut postgres::Client| -> i64 {
        scalar(
            c,
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()",
        )
    };
    let before = sessions(&mut c);
    let _d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "4"]);
    wait_until(
        "every tenant copied and streaming",
        std::time::Duration::from_secs(120),
        || {
            let made: bool = scalar(&mut c, "SELECT to_regclass('sqlite2pg.stream') IS NOT NULL");
            made && scalar::<i64>(
                &mut c,
                "SELECT count(*) FROM sqlite2pg.table_state WHERE phase = 'ready'",
            ) == n
                && scalar::<i64>(&mut c, "SELECT count(*) FROM sqlite2pg.stream") == n
        },
    );
    for i in 0..n {
        let tenant = format!("t{i:02}");
        c.batch_execute(&format!("SET search_path = tenant_{tenant}"))
            .unwrap();
        assert_table_equal(&tenants.join(format!("{tenant}.db")), &mut c, "items", "id");
    }
    // A backend counts its session in the server's statistics by its first report at the
    // latest, and one that exited has reported: at most the pool, never one a tenant.
    let opened = sessions(&mut c) - before;
    assert!(
        opened <= 4,
        "the daemon opened {opened} sessions for {n} tenants under --max-connections 4"
    );
}

/// Tenants of many shapes through one pooled session: the staging tables each shape leaves
/// in it are dropped once the session holds too many of them, and the tenants stay equal.
#[test]
fn a_session_handed_through_many_shapes_keeps_its_temp_tables_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    let n = 60;
    // Each tenant's table has a column of its own: 60 shapes, two staging tables each.
    for i in 0..n {
        tenant_file(
            &tenants,
            &format!("s{i:02}.db"),
            &format!("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, c{i} INTEGER);"),
        );
    }
    let db = TestDb::new();
    let cfg = glob_config(dir.path(), &db, &tenants);
    let d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "3"]);
    let path = |i: usize| tenants.join(format!("s{i:02}.db"));
    let wait = |i: usize| {
        let name = format!("s{i:02}");
        wait_tenant_caught_up(&path(i), &db.url, &name, std::time::Duration::from_secs(60))
    };
    (0..n).for_each(wait);
    let mut c = db.client();
    let most_temp_tables = |c: &mut postgres::Client| -> i64 {
        scalar(
            c,
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM pg_class c
               JOIN pg_namespace s ON s.oid = c.relnamespace
              WHERE s.nspname LIKE 'pg\\_temp\\_%' GROUP BY s.nspname) t",
        )
    };
    let mut most = 0;
    // Twice round: in the second, a tenant's staging tables may be gone with the rest (the
    // session dropped them all), and what the daemon remembers of the session must say so.
    for round in 0..2 {
        for i in 0..n {
            rusqlite::Connection::open(path(i))
                .unwrap()
                .execute_batch(&format!(
                    "INSERT INTO items (name, c{i}) VALUES ('round {round}', {i});"
                ))
                .unwrap();
            wait(i);
            most = most.max(most_temp_tables(&mut c));
        }
    }
    for i in [0, n / 2, n - 1] {
        c.batch_execute(&format!("SET search_path = tenant_s{i:02}"))
            .unwrap();
        assert_table_equal(&path(i), &mut c, "items", "id");
    }
    // 120 staging tables made in one session; the count comes at one hand-off in 16, and
    // each hand-off adds at most two.
    assert!(most <= 64 + 2 * 16, "one session held {most} temp tables");
    assert!(
        most > 16,
        "the session held {most} temp tables at most: the tenants did not share it"
    );
    let log = d.log_text();
    assert!(!log.contains(" ERROR "), "the daemon's log:\n{log}");
}

/// A fleet's tenant connects again at each burst of work once another tenant waits for its
/// session; its changelog is pruned once 10,000 changes are applied, counted from its last
/// prune, not from each connect.
#[test]
fn a_tenant_past_ten_thousand_changes_does_not_prune_at_every_burst() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    for name in ["big.db", "other.db"] {
        tenant_file(
            &tenants,
            name,
            "PRAGMA journal_mode = wal; CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);",
        );
    }
    let (big, other) = (tenants.join("big.db"), tenants.join("other.db"));
    let db = TestDb::new();
    let cfg = glob_config(dir.path(), &db, &tenants);
    // Two connections are the daemon's own: the two tenants take turns on the third.
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_fleet(
        &cfg,
        &db,
        &["--max-connections", "3", "--metrics-addr", &addr],
    );
    // The fleet's prunes and the rows they deleted, as the daemon counts them.
    let prunes = || -> (f64, f64) {
        let (_, body) = http_get(&addr, "/metrics");
        let counter = |name: &str| {
            metric_value(&body, name)
                .unwrap_or_else(|| panic!("{name} is not in the scrape:\n{body}"))
        };
        (
            counter("sqlite2pg_changelog_prunes_total"),
            counter("sqlite2pg_changelog_pruned_rows_total"),
        )
    };
    let wait = |path: &PathBuf, name: &str| {
        wait_tenant_caught_up(path, &db.url, name, std::time::Duration::from_secs(60));
    };
    let write = |path: &PathBuf, sql: &str| {
        rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch(sql)
            .unwrap()
    };
    // A burst of `big`'s, then one of `other`'s, which waits for the session `big` holds.
    let burst = |sql: &str| {
        write(&big, sql);
        wait(&big, "big");
        // The prune follows the drain's commit: time for it to run before counting.
        std::thread::sleep(std::time::Duration::from_millis(200));
        write(&other, "INSERT INTO items (name) VALUES ('turn')");
        wait(&other, "other");
    };
    wait(&big, "big");
    wait(&other, "other");
    let changelog = || -> i64 {
        sqlite_rows(
            &big,
            "SELECT CAST(count(*) AS TEXT) FROM _sqlite2pg_changes",
        )[0]
        .parse()
        .unwrap()
    };
    burst(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10100)
         INSERT INTO items (name) SELECT 'bulk ' || i FROM n;",
    );
    // The 10,100 changes are pruned, in slices, over the next bursts at most.
    let mut bursts = 0;
    while changelog() > 50 {
        bursts += 1;
        assert!(
            bursts <= 20,
            "10,100 applied changes still unpruned after {bursts} bursts"
        );
        burst(&format!(
            "INSERT INTO items (name) VALUES ('after {bursts}')"
        ));
    }
    let before = changelog();
    let (prunes_before, pruned_rows) = prunes();
    assert!(
        pruned_rows >= 10_000.0,
        "the 10,100 changes were pruned, but the daemon counts {pruned_rows} rows pruned"
    );
    for i in 0..5 {
        burst(&format!(
            "UPDATE items SET name = 'small {i}' WHERE id = {}",
            i + 1
        ));
    }
    assert!(
        changelog() >= before + 5,
        "5 bursts of one change each left {} changelog rows (from {before}): the tenant pruned at each",
        changelog()
    );
    let (prunes_after, _) = prunes();
    assert!(
        prunes_after < prunes_before + 5.0,
        "5 bursts of one change each made {} prunes",
        prunes_after - prunes_before
    );
    let backends = scalar::<i64>(
        &mut db.client(),
        "SELECT count(DISTINCT pid) FROM pg_stat_activity WHERE application_name = 'sqlite2pg'
           AND datname = current_database()",
    );
    assert!(backends <= 3, "{backends} backends for a pool of 3");
    let mut c = db.client();
    for (name, path) in [("big", &big), ("other", &other)] {
        c.batch_execute(&format!("SET search_path = tenant_{name}"))
            .unwrap();
        assert_table_equal(path, &mut c, "items", "id");
    }
    let log = d.log_text();
    assert!(!log.contains(" ERROR "), "the daemon's log:\n{log}");
}

#[test]
fn a_fleet_cutover_takes_tenants_one_at_a_time_and_stops_at_the_first_that_fails() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    let names: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        tenant_file(
            &tenants,
            &format!("{name}.db"),
            &format!(
                "CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, visits INTEGER DEFAULT 0);
                 INSERT INTO clients (name) VALUES ('{name} a'), ('{name} b');
                 CREATE TABLE t{i} (id INTEGER PRIMARY KEY, v TEXT);"
            ),
        );
    }
    let db = TestDb::new();
    let cfg = glob_config(dir.path(), &db, &tenants);
    // Every tenant copied and its stream started, but t05's: its cutover fails.
    for name in names.iter().filter(|n| *n != "t05") {
        let out = on_fleet(&cfg, &["--tenant", name, "run", "--snapshot-only"]);
        assert!(out.status.success(), "run {name}: {}", text(&out));
        // Changes the cutover's own drain applies (no daemon runs).
        sqlite3_shell(
            &tenants.join(format!("{name}.db")),
            "UPDATE clients SET visits = visits + 1; INSERT INTO clients (name) VALUES ('late');",
        );
    }
    let hooks = dir.path().join("hooks.txt");
    let hook = format!("echo \"$SQLITE2PG_TENANT\" >> '{}'", hooks.display());
    let out = on_fleet(&cfg, &["cutover", "--pace", "0.05", "--exec", &hook]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("fleet cutover stopped at tenant t05:")
            && said.contains("cut over now: 5 (t00, t01, t02, t03, t04)")
            && said.contains("not tried: t06, t07"),
        "{said}"
    );
    let hooked = |n: usize| -> Vec<String> {
        let all: Vec<String> = std::fs::read_to_string(&hooks)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(all.len(), n, "{all:?}");
        all
    };
    assert_eq!(hooked(5), names[..5]);
    let status = fleet_status(&cfg);
    assert_eq!(phase_count(&status, "cut_over"), 5, "{status:#}");
    assert_eq!(phase_count(&status, "streaming"), 14, "{status:#}");

    // Fixed, the fleet cutover goes on from there; the tenants cut over stay as they are.
    let out = on_fleet(&cfg, &["--tenant", "t05", "run", "--snapshot-only"]);
    assert!(out.status.success(), "run t05: {}", text(&out));
    let out = on_fleet(&cfg, &["cutover", "--exec", &hook]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("fleet cutover done: cut over now: 15 (t05, t06,")
            && said.contains("cut over before: t00, t01, t02, t03, t04;"),
        "{said}"
    );
    assert_eq!(hooked(20), names);
    let status = fleet_status(&cfg);
    assert_eq!(phase_count(&status, "cut_over"), 20, "{status:#}");
    // Each with its own window, and each tenant's rows equal with its own file's.
    let windows: i64 = scalar(
        &mut db.client(),
        "SELECT count(DISTINCT tenant) FROM sqlite2pg.cutover WHERE window_ms > 0",
    );
    assert_eq!(windows, 20);
    let mut c = db.client();
    for name in &names {
        c.batch_execute(&format!("SET search_path = tenant_{name}"))
            .unwrap();
        assert_table_equal(&tenants.join(format!("{name}.db")), &mut c, "clients", "id");
        let refused = std::process::Command::new("sqlite3")
            .arg(tenants.join(format!("{name}.db")))
            .arg("INSERT INTO clients (name) VALUES ('after');")
            .output()
            .unwrap();
        assert!(!refused.status.success(), "{name}'s SQLite is fenced");
    }
}

/// The tenant schemas a statement names.
fn tenant_schemas(statement: &str) -> std::collections::BTreeSet<String> {
    statement
        .split("\"tenant_")
        .skip(1)
        .filter_map(|rest| {
            rest.split_once('"')
                .map(|(name, _)| format!("tenant_{name}"))
        })
        .collect()
}

/// What docs/citus.md says a fleet never sends; `streaming`: before any cutover, when no
/// trigger goes on a tenant's table either. Each broken rule in words.
fn citus_refuses(statements: &[(String, String)], streaming: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut sharding_off = std::collections::BTreeSet::new();
    for (pid, s) in statements {
        let upper = s.to_uppercase();
        let mut broke = |rule: &str| out.push(format!("{rule}: {s}"));
        for form in [
            "CREATE PUBLICATION",
            "CREATE SUBSCRIPTION",
            "PG_CREATE_LOGICAL_REPLICATION_SLOT",
            "REPLICA IDENTITY",
        ] {
            if upper.contains(form) {
                broke("logical replication");
            }
        }
        if upper.contains("CREATE RULE") || upper.contains("CREATE OR REPLACE RULE") {
            broke("the rule system");
        }
        let schemas = tenant_schemas(s);
        if schemas.len() > 1 {
            broke("two tenants' schemas in one statement");
        }
        if upper.contains("REFERENCES") && schemas.len() != 1 {
            broke("a foreign key outside its tenant's schema");
        }
        if upper.starts_with("INSERT INTO \"TENANT_")
            && upper
                .split_once("VALUES")
                .is_some_and(|(_, v)| v.contains("(SELECT"))
        {
            broke("a subquery inside INSERT ... VALUES");
        }
        if upper.starts_with("UPDATE \"TENANT_")
            && [
                "RANDOM(",
                "CLOCK_TIMESTAMP(",
                "NEXTVAL(",
                "GEN_RANDOM_UUID(",
            ]
            .iter()
            .any(|f| upper.contains(f))
        {
            broke("a volatile function in an UPDATE of a tenant's table");
        }
        let trigger_on_tenant = upper.contains("CREATE TRIGGER")
            && upper
                .split_once(" ON ")
                .is_some_and(|(_, on)| on.trim_start().starts_with("\"TENANT_"));
        if trigger_on_tenant {
            let ours = ["SQLITE2PG_REVERSE", "SQLITE2PG_FENCE"]
                .iter()
                .any(|n| upper.contains(&format!("CREATE TRIGGER {n}")));
            if streaming || !ours {
                broke("a trigger on a tenant's table");
            }
        }
        if upper.contains("SET LOCAL CITUS.ENABLE_SCHEMA_BASED_SHARDING = OFF") {
            sharding_off.insert(pid.clone());
        }
        if upper.contains("CREATE SCHEMA IF NOT EXISTS SQLITE2PG;") && !sharding_off.contains(pid) {
            broke("the state schema made where Citus would distribute it");
        }
    }
    out
}

#[test]
fn the_statements_a_fleet_sends_stay_within_what_docs_citus_md_says_citus_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    tenant_file(
        &tenants,
        "acme.db",
        "PRAGMA journal_mode = wal;
         CREATE TABLE clients (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, visits INTEGER DEFAULT 0);
         CREATE TABLE projects (id INTEGER PRIMARY KEY AUTOINCREMENT, client_id INTEGER REFERENCES clients(id), title TEXT);
         CREATE TABLE audit (at TEXT, what TEXT);
         INSERT INTO clients (email) VALUES ('a@x'), ('b@x');
         INSERT INTO projects (client_id, title) VALUES (1, 'p1'), (2, 'p2');
         INSERT INTO audit VALUES ('t', 'seed');",
    );
    tenant_file(
        &tenants,
        "globex.db",
        "CREATE TABLE clients (id INTEGER PRIMARY KEY, email TEXT, visits INTEGER);
         INSERT INTO clients VALUES (1, 'g@x', 0);",
    );
    let db = TestDb::new();
    // Only sqlite2pg's sessions log their statements.
    let cfg = logging_config(
        dir.path(),
        &db,
        &format!("files = {:?}", format!("{}/*.db", tenants.display())),
    );
    let start = server_log(0).len();
    let files: Vec<(String, PathBuf)> = ["acme", "globex"]
        .iter()
        .map(|n| (n.to_string(), tenants.join(format!("{n}.db"))))
        .collect();
    let d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "4"]);
    for (name, path) in &files {
        wait_tenant_caught_up(path, &db.url, name, std::time::Duration::from_secs(60));
    }
    sqlite3_shell(
        &files[0].1,
        "INSERT INTO clients (email) VALUES ('c@x'); UPDATE clients SET visits = visits + 1;
         DELETE FROM projects WHERE id = 2; INSERT INTO audit VALUES ('u', 'write');
         DELETE FROM audit WHERE what = 'seed';",
    );
    sqlite3_shell(&files[1].1, "UPDATE clients SET visits = 5;");
    for (name, path) in &files {
        wait_tenant_caught_up(path, &db.url, name, std::time::Duration::from_secs(60));
    }
    let out = on_fleet(&cfg, &["--tenant", "globex", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    let streaming_end = server_log(0).len();
    let out = on_fleet(&cfg, &["--tenant", "acme", "cutover"]);
    assert!(out.status.success(), "{}", text(&out));
    db.client()
        .batch_execute("INSERT INTO tenant_acme.clients (email) VALUES ('on-postgres@x')")
        .unwrap();
    wait_until(
        "the write on Postgres to reach acme's file",
        std::time::Duration::from_secs(30),
        || {
            sqlite_rows(
                &files[0].1,
                "SELECT email FROM clients WHERE email = 'on-postgres@x'",
            )
            .len()
                == 1
        },
    );
    let out = on_fleet(&cfg, &["--tenant", "acme", "fallback"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.stop());

    let log = server_log(start);
    let split = streaming_end - start;
    let (before, after) = log.split_at(split.min(log.len()));
    let streamed = logged_statements(before);
    let switched = logged_statements(after);
    // The log holds what was sent: the snapshot's COPY, the stream's upserts, the cutover.
    for (phase, statements, needle) in [
        ("streaming", &streamed, "COPY \"tenant_acme\".\"clients\""),
        (
            "streaming",
            &streamed,
            "INSERT INTO \"tenant_acme\".\"clients\"",
        ),
        (
            "streaming",
            &streamed,
            "DELETE FROM \"tenant_acme\".\"audit\"",
        ),
        ("the switches", &switched, "LOCK TABLE \"tenant_acme\"."),
    ] {
        assert!(
            statements.iter().any(|(_, s)| s.contains(needle)),
            "{phase}: no statement with {needle} in the log"
        );
    }
    let mut broken = citus_refuses(&streamed, true);
    broken.extend(citus_refuses(&switched, false));
    assert!(
        broken.is_empty(),
        "statements outside docs/citus.md:\n{}",
        broken.join("\n")
    );
    // The rules can fail: statements of the forms they forbid are caught.
    let forbidden = [
        "CREATE PUBLICATION p FOR TABLE \"tenant_acme\".\"clients\"",
        "ALTER TABLE \"tenant_acme\".\"projects\" ADD FOREIGN KEY (client_id) REFERENCES \"tenant_globex\".\"clients\" (id)",
        "UPDATE \"tenant_acme\".\"clients\" SET visits = random()",
        "CREATE TRIGGER t AFTER INSERT ON \"tenant_acme\".\"clients\" FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE SCHEMA IF NOT EXISTS sqlite2pg;",
    ];
    for f in forbidden {
        assert!(
            !citus_refuses(&[("1".into(), f.into())], true).is_empty(),
            "not caught: {f}"
        );
    }
}

/// Every finding's message anywhere in a report.
fn messages(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .flat_map(|(k, v)| match (k.as_str(), v) {
                ("message", serde_json::Value::String(s)) => vec![s.clone()],
                _ => messages(v),
            })
            .collect(),
        serde_json::Value::Array(a) => a.iter().flat_map(messages).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn check_says_a_one_way_fleet_has_no_way_back_and_names_the_triggers_citus_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    tenant_file(
        &tenants,
        "acme.db",
        "CREATE TABLE clients (id INTEGER PRIMARY KEY, email TEXT);
         CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT);
         CREATE TRIGGER clients_audit AFTER INSERT ON clients
         BEGIN INSERT INTO audit (what) VALUES (NEW.email); END;
         INSERT INTO clients (email) VALUES ('a@x');",
    );
    let db = TestDb::new();
    let glob = format!("files = {:?}", format!("{}/*.db", tenants.display()));
    let check = |fleet: &str| {
        let out = on_fleet(
            &config(dir.path(), &db, fleet),
            &["--tenant", "acme", "check", "--json"],
        );
        // Warnings: the tenant is still clean, a cutover is not refused.
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        messages(&report)
    };
    let said = check(&format!("{glob}\none_way = true"));
    assert!(
        said.iter()
            .any(|m| m.contains("one_way = true: this tenant's cutover is one way")),
        "{said:#?}"
    );
    assert!(
        said.iter()
            .any(|m| m.contains("trigger clients_audit")
                && m.contains("citus.enable_unsafe_triggers")),
        "{said:#?}"
    );
    // Two way: neither is said (the trigger is ported, an INFO of its own).
    let said = check(&glob);
    assert!(
        !said
            .iter()
            .any(|m| m.contains("one way") || m.contains("citus.enable_unsafe_triggers")),
        "{said:#?}"
    );
    assert!(
        said.iter()
            .any(|m| m.contains("trigger clients_audit is ported")),
        "{said:#?}"
    );
}

#[test]
fn a_one_way_fleet_cuts_over_with_no_trigger_on_postgres_and_refuses_a_way_back() {
    // What a fleet under Citus' schema-based sharding needs: Citus refuses a trigger on a
    // distributed table, and the way back rests on triggers. `one_way = true` cuts over
    // without them.
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    tenant_file(
        &tenants,
        "acme.db",
        "PRAGMA journal_mode = wal;
         CREATE TABLE clients (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE);
         CREATE TABLE projects (id INTEGER PRIMARY KEY, client_id INTEGER REFERENCES clients(id), title TEXT);
         INSERT INTO clients (email) VALUES ('a@x'), ('b@x');
         INSERT INTO projects (client_id, title) VALUES (1, 'p1');",
    );
    tenant_file(
        &tenants,
        "globex.db",
        "CREATE TABLE clients (id INTEGER PRIMARY KEY, email TEXT);
         INSERT INTO clients VALUES (1, 'g@x');",
    );
    let db = TestDb::new();
    let glob = format!("{}/*.db", tenants.display());
    // The shared layout is one way already: saying otherwise is refused.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let out = on_fleet(
        &config(
            &bad,
            &db,
            &format!("files = {glob:?}\nlayout = \"shared\"\none_way = false"),
        ),
        &["check"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("always one way"), "{}", text(&out));
    let cfg = logging_config(
        dir.path(),
        &db,
        &format!("files = {glob:?}\none_way = true"),
    );
    let start = server_log(0).len();
    let path = |name: &str| tenants.join(format!("{name}.db"));
    let wait = |name: &str| {
        wait_tenant_caught_up(
            &path(name),
            &db.url,
            name,
            std::time::Duration::from_secs(60),
        )
    };
    let d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "4"]);
    for name in ["acme", "globex"] {
        wait(name);
    }
    sqlite3_shell(
        &path("acme"),
        "INSERT INTO projects (client_id, title) VALUES (2, 'p2');",
    );
    wait("acme");

    let out = on_fleet(&cfg, &["--tenant", "acme", "cutover"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    for needle in [
        "writes were unavailable for",
        "1 foreign keys added",
        "one way ([fleet] one_way)",
        "validated",
    ] {
        assert!(said.contains(needle), "the cutover says {needle}: {said}");
    }
    let mut c = db.client();
    assert_eq!(
        triggers_in(&mut c, "tenant_acme"),
        0,
        "no trigger on acme's tables"
    );
    let fks: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated
           AND connamespace = 'tenant_acme'::regnamespace",
    );
    assert_eq!(fks, 1, "acme's key is back, validated");
    // acme's app writes on Postgres; the daemon leaves acme be, and globex streams on.
    c.batch_execute("INSERT INTO tenant_acme.clients (email) VALUES ('on-postgres@x')")
        .unwrap();
    d.wait_for_log("cut over one way ([fleet] one_way): nothing to follow");
    sqlite3_shell(&path("globex"), "INSERT INTO clients VALUES (2, 'after');");
    wait("globex");
    let out = on_fleet(&cfg, &["--tenant", "globex", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = on_fleet(&cfg, &["--tenant", "acme", "status"]);
    assert!(text(&out).contains("cut over one way"), "{}", text(&out));
    no_way_back(&cfg, "acme", "one_way = true");
    assert!(
        sqlite_rows(
            &path("acme"),
            "SELECT email FROM clients WHERE email = 'on-postgres@x'"
        )
        .is_empty(),
        "nothing went back to acme's file"
    );
    assert!(d.stop());
    // Not a trigger on a tenant's table in anything sent, the cutover's included.
    let statements = logged_statements(&server_log(start));
    assert!(
        statements
            .iter()
            .any(|(_, s)| s.contains("ALTER TABLE \"tenant_acme\".\"projects\" ADD CONSTRAINT")),
        "the cutover's statements are in the log"
    );
    let broken = citus_refuses(&statements, true);
    assert!(
        broken.is_empty(),
        "statements outside docs/citus.md:\n{}",
        broken.join("\n")
    );
    // A fleet that says two way afterwards still has no way back for acme: nothing captured
    // its app's writes on Postgres, and a fallback would lose them.
    let cfg = logging_config(dir.path(), &db, &format!("files = {glob:?}"));
    let out = on_fleet(&cfg, &["--tenant", "acme", "fallback"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("installed no capture on Postgres"),
        "{}",
        text(&out)
    );
    // The other way round: globex cut over two way, then the fleet says one way. Its app's
    // writes on Postgres are still captured, and the daemon says nothing follows them.
    let d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "4"]);
    wait("globex");
    let out = on_fleet(&cfg, &["--tenant", "globex", "cutover"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.stop());
    let cfg = logging_config(
        dir.path(),
        &db,
        &format!("files = {glob:?}\none_way = true"),
    );
    let d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "4"]);
    d.wait_for_log("but [fleet] now says one_way = true: nothing follows them back");
    assert!(d.stop());
}
