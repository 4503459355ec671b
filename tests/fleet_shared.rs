//! A fleet in the shared-tables layout: every tenant's rows in one set of tables, each row
//! naming its tenant in a column that leads every key. Ids and unique values overlap across
//! tenants and stay each tenant's own; each tenant's rows on Postgres stay equal to its file
//! while the apps write; a tenant whose tables differ from the shared ones is named and waits
//! alone until a person makes them agree; a tenant cuts over one way while the others stream
//! on, and the ids the shared sequences hand out never go back.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fleet::*;
use common::*;

const SHAPE: &str = "PRAGMA journal_mode = wal;
    CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE);
    CREATE TABLE notes (client_id INTEGER REFERENCES clients(id), body TEXT);
    CREATE TABLE projects (id INTEGER PRIMARY KEY, title TEXT);";

/// A tenant's rows as SQLite holds them, and as the shared tables hold its rows.
fn clients_on_both_sides(path: &Path, c: &mut postgres::Client, tenant: &str) {
    for (table, row, order) in [
        (
            "clients",
            "id || '|' || name || '|' || coalesce(email, '-')",
            "id",
        ),
        ("notes", "client_id || '|' || body", "1"),
        ("projects", "id || '|' || coalesce(title, '-')", "id"),
    ] {
        shared_rows_equal(path, c, tenant, table, row, order);
    }
}

fn write(path: &Path, sql: &str) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

#[test]
fn tenants_share_tables_each_row_naming_its_tenant_and_one_that_differs_waits_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    for (name, first) in [("acme", "ann"), ("globex", "gus"), ("initech", "ian")] {
        // The same ids, and one e-mail address in every tenant: unique per tenant only.
        tenant_file(
            &tenants,
            &format!("{name}.db"),
            &format!(
                "{SHAPE}
                 INSERT INTO clients (name, email) VALUES ('{first}', 'boss@example.com'), ('{first} 2', NULL);
                 INSERT INTO notes VALUES (1, 'hello'), (1, 'hello'), (2, 'bye');
                 INSERT INTO projects (title) VALUES ('one'), ('two'), ('three');"
            ),
        );
    }
    let db = TestDb::new();
    let cfg = config(dir.path(), &db, &shared_fleet(&tenants));
    let out = on_fleet(&cfg, &["check"]);
    assert!(out.status.success(), "check: {}", text(&out));
    assert!(
        text(&out).contains("a tenant's cutover is one way"),
        "check says what the layout's cutover leaves behind: {}",
        text(&out)
    );

    let d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "4"]);
    let path = |name: &str| tenants.join(format!("{name}.db"));
    let wait =
        |name: &str| wait_tenant_caught_up(&path(name), &db.url, name, Duration::from_secs(60));
    for name in ["acme", "globex", "initech"] {
        wait(name);
    }
    // The apps write on: keys, unique values swapped, duplicate keyless rows.
    write(
        &path("acme"),
        "INSERT INTO clients (name, email) VALUES ('new', 'new@example.com');
         UPDATE clients SET email = CASE id WHEN 1 THEN NULL ELSE 'boss@example.com' END WHERE id IN (1, 2);
         DELETE FROM notes WHERE rowid = (SELECT min(rowid) FROM notes WHERE body = 'hello');
         DELETE FROM projects WHERE id = 2; UPDATE projects SET title = 'uno' WHERE id = 1;",
    );
    write(
        &path("globex"),
        "DELETE FROM notes WHERE client_id = 2; DELETE FROM clients WHERE id = 2;
         INSERT INTO notes VALUES (1, 'x'), (1, 'x'); INSERT INTO projects (title) VALUES ('four');",
    );
    write(
        &path("initech"),
        "BEGIN; UPDATE clients SET name = name || '!'; INSERT INTO clients (id, name) VALUES (100, 'far'); COMMIT;",
    );
    let mut c = db.client();
    for name in ["acme", "globex", "initech"] {
        wait(name);
        clients_on_both_sides(&path(name), &mut c, name);
        let out = on_fleet(&cfg, &["--tenant", name, "verify"]);
        assert!(out.status.success(), "verify {name}: {}", text(&out));
    }
    // The layout Citus distributes by column: the tenant column leads the keys.
    let keys = pg_rows(
        &mut c,
        "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
           JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'crm' AND i.indisunique ORDER BY 1, 2",
    );
    assert!(!keys.is_empty());
    for k in &keys {
        let def = k[1].as_deref().unwrap_or_default();
        assert!(
            def.contains("(tenant_id, "),
            "a unique key without the tenant first: {def}"
        );
    }

    // A tenant whose file is at another migration (a phone, no e-mail) appears: it is named
    // and waits, and the others stream on.
    tenant_file(
        &tenants,
        "umbrella.db",
        "CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, phone TEXT);
         CREATE TABLE notes (client_id INTEGER REFERENCES clients(id), body TEXT);
         CREATE TABLE projects (id INTEGER PRIMARY KEY, title TEXT);
         INSERT INTO clients (name, phone) VALUES ('uma', '555');",
    );
    wait_until(
        "the differing tenant to be named in the daemon's log",
        Duration::from_secs(60),
        || d.log_text().contains("has no column phone"),
    );
    write(
        &path("acme"),
        "INSERT INTO clients (name) VALUES ('still streaming');",
    );
    wait("acme");
    clients_on_both_sides(&path("acme"), &mut c, "acme");
    let waiting: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM crm.clients WHERE tenant_id = 'umbrella'",
    );
    assert_eq!(waiting, 0, "nothing of the differing tenant is written");
    // A person makes the shared table hold both: the tenant goes on by itself, and its rows
    // hold NULL in the column its file lacks.
    c.batch_execute("ALTER TABLE crm.clients ADD COLUMN phone text")
        .unwrap();
    wait("umbrella");
    let phone: Vec<Vec<Option<String>>> = pg_rows(
        &mut c,
        "SELECT name, phone, email FROM crm.clients WHERE tenant_id = 'umbrella'",
    );
    assert_eq!(
        phone,
        [[Some("uma".to_string()), Some("555".to_string()), None]]
    );
    let out = on_fleet(&cfg, &["--tenant", "umbrella", "verify"]);
    assert!(out.status.success(), "verify umbrella: {}", text(&out));
    // The others' rows hold NULL in the new column; they are equal still.
    let out = on_fleet(&cfg, &["--tenant", "acme", "verify"]);
    assert!(out.status.success(), "verify acme: {}", text(&out));
    drop(d);
}

/// The next id the app of `tenant` gets for a client on Postgres.
fn next_client_id(c: &mut postgres::Client, tenant: &str) -> i64 {
    c.query_one(
        "INSERT INTO crm.clients (tenant_id, name) VALUES ($1, 'on postgres') RETURNING id",
        &[&tenant],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_shared_tenant_cuts_over_one_way_while_the_others_stream_and_their_apps_write() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    for name in ["acme", "globex", "initech"] {
        tenant_file(
            &tenants,
            &format!("{name}.db"),
            // The app leaves foreign keys off, and a note finds no client.
            &format!(
                "PRAGMA foreign_keys = OFF; {SHAPE}
                 INSERT INTO clients (name, email) VALUES ('{name}', 'boss@example.com'), ('{name} 2', NULL);
                 INSERT INTO notes VALUES (1, 'hello'), (7, 'orphan');
                 INSERT INTO projects (title) VALUES ('one');"
            ),
        );
    }
    // initech's ids run far past acme's: the ids handed out on Postgres start past both.
    write(
        &tenants.join("initech.db"),
        "INSERT INTO clients (id, name) VALUES (100, 'far');",
    );
    let db = TestDb::new();
    let cfg = config(dir.path(), &db, &shared_fleet(&tenants));
    let d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "4"]);
    let path = |name: &str| tenants.join(format!("{name}.db"));
    let wait =
        |name: &str| wait_tenant_caught_up(&path(name), &db.url, name, Duration::from_secs(60));
    for name in ["acme", "globex", "initech"] {
        wait(name);
    }
    // globex's app writes all along, one transaction after another.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, file) = (stop.clone(), path("globex"));
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&file).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            let (mut written, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match conn.execute_batch(
                    "BEGIN; INSERT INTO projects (title) VALUES ('busy'); UPDATE clients SET name = name || '.' WHERE id = 1; COMMIT;",
                ) {
                    Ok(()) => written += 1,
                    Err(_) => {
                        failed += 1;
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                }
                std::thread::sleep(Duration::from_millis(15));
            }
            (written, failed)
        })
    };

    let (hook, hook_out) = tenant_hook(dir.path());
    let out = on_fleet(&cfg, &["--tenant", "acme", "cutover", "--exec", &hook]);
    assert!(out.status.success(), "cutover acme: {}", text(&out));
    let said = text(&out);
    assert!(said.contains("writes were unavailable for"), "{said}");
    assert!(
        said.contains("one way (shared tables)") && said.contains("1 foreign keys stay kept aside"),
        "the cutover says what it leaves: {said}"
    );
    assert_eq!(
        std::fs::read_to_string(&hook_out).unwrap().trim(),
        "acme crm"
    );
    // acme's SQLite is fenced; its app writes on Postgres, naming its tenant, and its next id
    // is past every tenant's (initech holds 100).
    let refused = rusqlite::Connection::open(path("acme"))
        .unwrap()
        .execute_batch("INSERT INTO clients (name) VALUES ('too late');");
    assert!(refused.is_err(), "acme's SQLite is fenced");
    let mut c = db.client();
    assert_eq!(next_client_id(&mut c, "acme"), 101);
    // An app that takes ids ahead (as some ORMs do) keeps them: a tenant that joins later,
    // whose snapshot moves the sequence past its own ids, never moves it back.
    let ahead: i64 = scalar(
        &mut c,
        "SELECT nextval(pg_get_serial_sequence('crm.clients', 'id'))",
    );
    assert_eq!(ahead, 102);
    c.batch_execute("DELETE FROM crm.clients WHERE tenant_id = 'acme' AND id = 101")
        .unwrap();
    tenant_file(
        &tenants,
        "umbrella.db",
        &format!(
            "{SHAPE}
             INSERT INTO clients (name) VALUES ('uma');
             INSERT INTO projects (title) VALUES ('u');"
        ),
    );
    wait("umbrella");
    assert_eq!(
        next_client_id(&mut c, "acme"),
        103,
        "the sequence never goes back"
    );
    // No capture, no foreign key: Postgres takes a note of acme's that finds no client, as
    // the other tenants' apps' files do.
    assert_eq!(
        triggers_in(&mut c, "crm"),
        0,
        "nothing captures the shared tables"
    );
    let fks: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'crm'::regnamespace",
    );
    assert_eq!(fks, 0, "a shared table's key waits for every tenant");
    c.batch_execute("INSERT INTO crm.notes (tenant_id, client_id, body) VALUES ('acme', 999, 'x')")
        .unwrap();

    // The daemon leaves acme be, and the others stream on.
    wait_until(
        "the daemon to stop following acme",
        Duration::from_secs(30),
        || {
            d.log_text()
                .contains("cut over one way (shared tables): nothing to follow")
        },
    );
    write(
        &path("initech"),
        "UPDATE clients SET name = 'moved on' WHERE id = 100; DELETE FROM notes WHERE client_id = 7;",
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (written, failed) = writer.join().unwrap();
    assert!(written > 5, "globex's app wrote {written} times");
    assert_eq!(failed, 0, "globex's app never saw a failed write");
    for name in ["globex", "initech", "umbrella"] {
        wait(name);
        clients_on_both_sides(&path(name), &mut c, name);
        let out = on_fleet(&cfg, &["--tenant", name, "verify"]);
        assert!(out.status.success(), "verify {name}: {}", text(&out));
    }
    let acme_rows: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM crm.clients WHERE tenant_id = 'acme'",
    );
    assert_eq!(
        acme_rows, 3,
        "acme's two clients and the one its app added on Postgres"
    );
    let status = fleet_status(&cfg);
    let acme = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "acme")
        .unwrap_or_else(|| panic!("{status:#}"));
    assert_eq!(acme["status"]["phase"], "cut_over", "{acme:#}");
    assert_eq!(acme["status"]["direction"], "none", "{acme:#}");
    let out = on_fleet(&cfg, &["--tenant", "acme", "status"]);
    assert!(
        text(&out).contains("cut over one way (no capture on Postgres"),
        "{}",
        text(&out)
    );
    // A daemon killed and started again leaves acme be too, and the others stream on.
    d.kill9();
    let d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "4"]);
    d.wait_for_log("cut over one way (shared tables): nothing to follow");
    write(
        &path("globex"),
        "INSERT INTO projects (title) VALUES ('after the restart');",
    );
    wait("globex");
    clients_on_both_sides(&path("globex"), &mut c, "globex");

    no_way_back(&cfg, "acme", "cutover is one way");
    assert_eq!(next_client_id(&mut c, "acme"), 104);

    // The rest cut over one after another; the last puts the kept key back, NOT VALID (the
    // tenants' orphan notes are still there), and new rows are checked.
    let out = on_fleet(&cfg, &["cutover", "--pace", "0.05"]);
    assert!(out.status.success(), "fleet cutover: {}", text(&out));
    assert!(text(&out).contains("stays NOT VALID"), "{}", text(&out));
    let cut: i64 = scalar(&mut c, "SELECT count(*) FROM sqlite2pg.cutover");
    assert_eq!(cut, 4);
    // (keys on the shared tables, of them validated, keys kept aside)
    let keys = |c: &mut postgres::Client| -> (i64, i64, i64) {
        let row = c
            .query_one(
                "SELECT (SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'crm'::regnamespace),
                        (SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'crm'::regnamespace AND convalidated),
                        (SELECT count(*) FROM sqlite2pg.foreign_key WHERE target_schema = 'crm')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        keys(&mut c),
        (1, 0, 0),
        "no tenant streams: the key is back"
    );
    let refused = c.batch_execute(
        "INSERT INTO crm.notes (tenant_id, client_id, body) VALUES ('acme', 998, 'no client')",
    );
    assert!(
        refused.is_err(),
        "a new note that finds no client is refused"
    );
    // A tenant that joins later streams with the key kept aside again (its orphan is taken).
    tenant_file(
        &tenants,
        "wayne.db",
        &format!(
            "PRAGMA foreign_keys = OFF; {SHAPE} INSERT INTO clients (name) VALUES ('bruce'); INSERT INTO notes VALUES (9, 'orphan');"
        ),
    );
    wait("wayne");
    shared_rows_equal(
        &path("wayne"),
        &mut c,
        "wayne",
        "notes",
        "client_id || '|' || body",
        "1",
    );
    assert_eq!(keys(&mut c), (0, 0, 1), "kept aside while wayne streams");
    // (The daemon stopped: it would take acme up again once uninstalled; wayne's cutover
    // drains by itself.)
    drop(d);
    // Uninstalling one tenant leaves the schema's kept key to the others.
    let out = on_fleet(&cfg, &["--tenant", "acme", "uninstall"]);
    assert!(out.status.success(), "uninstall acme: {}", text(&out));
    assert_eq!(
        keys(&mut c),
        (0, 0, 1),
        "the key is kept for the tenants still there"
    );
    // wayne's cutover, the last again, puts it back.
    let out = on_fleet(&cfg, &["--tenant", "wayne", "cutover"]);
    assert!(out.status.success(), "cutover wayne: {}", text(&out));
    assert_eq!(keys(&mut c), (1, 0, 0), "{}", text(&out));
}

#[test]
fn a_shared_tenant_whose_app_relies_on_a_trigger_or_a_view_is_refused_its_cutover_until_they_go() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    // The same tables in both; a key whose delete cascades in both (the app may or may not
    // turn foreign keys on); acme's app also keeps a trigger and a view.
    let shape = format!(
        "{SHAPE}
         CREATE TABLE tags (client_id INTEGER REFERENCES clients(id) ON DELETE CASCADE, tag TEXT);
         INSERT INTO clients (name) VALUES ('first');
         INSERT INTO tags VALUES (1, 'vip');"
    );
    tenant_file(&tenants, "globex.db", &shape);
    tenant_file(
        &tenants,
        "acme.db",
        &format!(
            "{shape}
             CREATE TRIGGER shout AFTER INSERT ON projects BEGIN
               UPDATE projects SET title = upper(title) WHERE id = NEW.id;
             END;
             CREATE VIEW client_names AS SELECT name FROM clients;"
        ),
    );
    let db = TestDb::new();
    let cfg = config(dir.path(), &db, &shared_fleet(&tenants));
    let path = |name: &str| tenants.join(format!("{name}.db"));

    // `check` is not clean while acme's app relies on them, and names each; the cascade is
    // said for both, as a warning.
    let out = on_fleet(&cfg, &["check"]);
    let said = text(&out);
    assert!(!out.status.success(), "check is not clean: {said}");
    for needle in ["trigger shout", "view client_names", "ON DELETE CASCADE"] {
        assert!(said.contains(needle), "check names {needle}: {said}");
    }
    let out = on_fleet(&cfg, &["--tenant", "globex", "check"]);
    assert!(out.status.success(), "globex's check: {}", text(&out));
    assert!(text(&out).contains("ON DELETE CASCADE"), "{}", text(&out));

    // Both stream all the same: the trigger's work comes from SQLite like any write.
    let d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "4"]);
    write(
        &path("acme"),
        "INSERT INTO projects (title) VALUES ('quiet');",
    );
    for name in ["acme", "globex"] {
        wait_tenant_caught_up(&path(name), &db.url, name, Duration::from_secs(60));
    }
    let mut c = db.client();
    let title: String = scalar(
        &mut c,
        "SELECT title FROM crm.projects WHERE tenant_id = 'acme'",
    );
    assert_eq!(title, "QUIET");

    // acme's cutover refuses before any fence, naming both; its app goes on writing SQLite.
    let out = on_fleet(&cfg, &["--tenant", "acme", "cutover"]);
    let said = text(&out);
    assert!(!out.status.success(), "acme's cutover refuses: {said}");
    for needle in ["trigger shout", "view client_names", "nothing was fenced"] {
        assert!(said.contains(needle), "the refusal names {needle}: {said}");
    }
    write(
        &path("acme"),
        "INSERT INTO projects (title) VALUES ('still here');",
    );
    wait_tenant_caught_up(&path("acme"), &db.url, "acme", Duration::from_secs(60));
    let cut: i64 = scalar(&mut c, "SELECT count(*) FROM sqlite2pg.cutover");
    assert_eq!(cut, 0);

    // globex relies on neither: it cuts over, warned about its cascade.
    let out = on_fleet(&cfg, &["--tenant", "globex", "cutover"]);
    assert!(out.status.success(), "globex's cutover: {}", text(&out));
    assert!(text(&out).contains("ON DELETE CASCADE"), "{}", text(&out));

    // Once acme's app does that work itself and drops them, acme cuts over too.
    write(
        &path("acme"),
        "DROP TRIGGER shout; DROP VIEW client_names; INSERT INTO projects (title) VALUES ('Done by the app');",
    );
    wait_tenant_caught_up(&path("acme"), &db.url, "acme", Duration::from_secs(60));
    let out = on_fleet(&cfg, &["--tenant", "acme", "cutover"]);
    assert!(out.status.success(), "acme's cutover: {}", text(&out));
    let cut: i64 = scalar(&mut c, "SELECT count(*) FROM sqlite2pg.cutover");
    assert_eq!(cut, 2);
    assert_eq!(
        triggers_in(&mut c, "crm"),
        0,
        "no trigger on the shared tables"
    );
    drop(d);
}

#[test]
fn a_tenant_joining_while_the_last_one_puts_the_keys_back_still_streams_its_orphans() {
    // The race between a joining tenant's snapshot and the cutover of the last tenant
    // streaming into the shared tables, forced: wayne's snapshot has kept the keys aside
    // (there are none yet) and waits to read its file, which the test holds locked, while
    // globex's cutover finds no other tenant's tables and puts the key back.
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    for name in ["acme", "globex"] {
        tenant_file(
            &tenants,
            &format!("{name}.db"),
            &format!(
                "PRAGMA foreign_keys = OFF; {SHAPE}
                 INSERT INTO clients (name) VALUES ('{name}');
                 INSERT INTO notes VALUES (1, 'hello');"
            ),
        );
    }
    let db = TestDb::new();
    let cfg = config(dir.path(), &db, &shared_fleet(&tenants));
    // wayne's snapshot waits for its file as long as the test holds it.
    let body = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("busy_timeout_ms = 120000\n{body}")).unwrap();
    let d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "4"]);
    let path = |name: &str| tenants.join(format!("{name}.db"));
    let wait =
        |name: &str| wait_tenant_caught_up(&path(name), &db.url, name, Duration::from_secs(60));
    for name in ["acme", "globex"] {
        wait(name);
    }
    let out = on_fleet(&cfg, &["--tenant", "acme", "cutover"]);
    assert!(out.status.success(), "cutover acme: {}", text(&out));

    // wayne's keeping of the keys aside waits for the test's lock 4242 (its file has a
    // rollback journal: a lock on it holds readers up).
    let mut c = db.client();
    let mut hold = db.client();
    hold.batch_execute(
        "SELECT pg_advisory_lock(4242);
         CREATE FUNCTION public.hold_wayne() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_lock_shared(4242); PERFORM pg_advisory_unlock_shared(4242); RETURN NEW; END $$;
         CREATE TRIGGER hold_wayne BEFORE INSERT ON sqlite2pg.foreign_key FOR EACH ROW
           EXECUTE FUNCTION public.hold_wayne();",
    )
    .unwrap();
    tenant_file(
        &tenants,
        "wayne.db",
        &format!(
            "PRAGMA foreign_keys = OFF; {} INSERT INTO clients (name) VALUES ('bruce'); INSERT INTO notes VALUES (9, 'orphan');",
            SHAPE.replace("journal_mode = wal", "journal_mode = delete")
        ),
    );
    let waiting = |c: &mut postgres::Client, query: &str| -> bool {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
                &[&format!("{query}%")],
            )
            .unwrap()
            .get(0);
        n > 0
    };
    wait_until(
        "wayne's snapshot to keep the keys aside",
        Duration::from_secs(60),
        || waiting(&mut c, "INSERT INTO sqlite2pg.foreign_key"),
    );
    let file = rusqlite::Connection::open(path("wayne")).unwrap();
    file.execute_batch("BEGIN EXCLUSIVE").unwrap();
    hold.batch_execute("SELECT pg_advisory_unlock(4242)")
        .unwrap();
    let out = on_fleet(&cfg, &["--tenant", "globex", "cutover"]);
    assert!(out.status.success(), "cutover globex: {}", text(&out));
    assert!(
        text(&out).contains("1 foreign keys added"),
        "the last cutover put the key back: {}",
        text(&out)
    );
    file.execute_batch("ROLLBACK").unwrap();

    // wayne's snapshot takes it aside again before its copy: its orphan streams, no failure.
    wait("wayne");
    shared_rows_equal(
        &path("wayne"),
        &mut c,
        "wayne",
        "notes",
        "client_id || '|' || body",
        "1",
    );
    let kept: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM sqlite2pg.foreign_key WHERE target_schema = 'crm'",
    );
    assert_eq!(kept, 1, "kept aside while wayne streams");
    let log = d.log_text();
    assert!(
        !log.contains("violates foreign key constraint"),
        "wayne's copy met the key it should have taken aside:\n{log}"
    );
    drop(d);
}

/// What Citus refuses of statements on tables distributed by the tenant column (see
/// docs/citus.md), each broken rule in words: a write that does not name the tenant (it
/// would reach every shard, and other tenants' rows), a unique key or primary key that
/// does not lead with it, and a trigger (the one-way cutover installs none).
fn shared_refuses(statements: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (_, s) in statements {
        let upper = s.trim_start().to_uppercase();
        let mut broke = |rule: &str| out.push(format!("{rule}: {s}"));
        let writes = [
            "INSERT INTO \"CRM\".",
            "DELETE FROM \"CRM\".",
            "UPDATE \"CRM\".",
            "COPY \"CRM\".",
        ]
        .iter()
        .any(|w| upper.starts_with(w));
        if writes && !s.contains("\"tenant_id\"") {
            broke("a write on a shared table that does not name the tenant");
        }
        let keyed = (upper.starts_with("CREATE UNIQUE INDEX") && upper.contains(" ON \"CRM\"."))
            || (upper.starts_with("ALTER TABLE \"CRM\".")
                && (upper.contains(" PRIMARY KEY") || upper.contains(" UNIQUE")));
        if keyed && !s.contains("(\"tenant_id\"") {
            broke("a unique key of a shared table that does not lead with the tenant column");
        }
        if upper.contains("CREATE TRIGGER") && upper.contains(" ON \"CRM\".") {
            broke("a trigger on a shared table");
        }
    }
    out
}

#[test]
fn the_statements_on_shared_tables_name_the_tenant_and_lead_every_key_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    for name in ["acme", "globex"] {
        tenant_file(
            &tenants,
            &format!("{name}.db"),
            &format!(
                "{SHAPE}
                 INSERT INTO clients (name, email) VALUES ('{name}', 'a@x'), ('{name} 2', 'b@x');
                 INSERT INTO notes VALUES (1, 'n'); INSERT INTO projects (title) VALUES ('p');"
            ),
        );
    }
    let db = TestDb::new();
    // Only sqlite2pg's sessions log their statements.
    let cfg = logging_config(dir.path(), &db, &shared_fleet(&tenants));
    let start = server_log(0).len();
    let d = Daemon::start_fleet(&cfg, &db, &["--max-connections", "4"]);
    let path = |name: &str| tenants.join(format!("{name}.db"));
    for name in ["acme", "globex"] {
        wait_tenant_caught_up(&path(name), &db.url, name, Duration::from_secs(60));
    }
    write(
        &path("acme"),
        "INSERT INTO clients (name) VALUES ('c'); UPDATE clients SET email = NULL WHERE id = 1;
         DELETE FROM notes; INSERT INTO notes VALUES (2, 'm'); DELETE FROM projects;",
    );
    write(&path("globex"), "UPDATE projects SET title = 'q';");
    for name in ["acme", "globex"] {
        wait_tenant_caught_up(&path(name), &db.url, name, Duration::from_secs(60));
        let out = on_fleet(&cfg, &["--tenant", name, "verify"]);
        assert!(out.status.success(), "verify {name}: {}", text(&out));
    }
    // The one-way cutover's statements too.
    let out = on_fleet(&cfg, &["--tenant", "acme", "cutover"]);
    assert!(out.status.success(), "cutover acme: {}", text(&out));
    write(&path("globex"), "UPDATE projects SET title = 'r';");
    wait_tenant_caught_up(&path("globex"), &db.url, "globex", Duration::from_secs(60));
    assert!(d.stop());
    let statements = logged_statements(&server_log(start));
    for needle in [
        "COPY \"crm\".\"clients\"",
        "INSERT INTO \"crm\".\"clients\"",
        "DELETE FROM \"crm\".\"notes\"",
        "DELETE FROM \"crm\".\"projects\"",
        "ADD CONSTRAINT \"clients_pkey\" PRIMARY KEY",
        "CREATE UNIQUE INDEX",
        "LOCK TABLE \"crm\".\"clients\"",
        "SELECT setval(",
    ] {
        assert!(
            statements.iter().any(|(_, s)| s.contains(needle)),
            "no statement with {needle} in the log"
        );
    }
    let broken = shared_refuses(&statements);
    assert!(
        broken.is_empty(),
        "statements outside docs/citus.md:\n{}",
        broken.join("\n")
    );
    // The rules can fail.
    for f in [
        "DELETE FROM \"crm\".\"clients\" t USING \"_s2p_del_1\" d WHERE t.\"id\" = d.\"id\"",
        "CREATE UNIQUE INDEX IF NOT EXISTS \"e\" ON \"crm\".\"clients\" (\"email\")",
        "ALTER TABLE \"crm\".\"clients\" ADD CONSTRAINT \"clients_pkey\" PRIMARY KEY (\"id\")",
        "CREATE TRIGGER sqlite2pg_reverse AFTER INSERT ON \"crm\".\"clients\" FOR EACH ROW",
    ] {
        assert!(
            !shared_refuses(&[("1".into(), f.into())]).is_empty(),
            "not caught: {f}"
        );
    }
}
