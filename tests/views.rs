//! The app's views on Postgres after the cutover: every view sqlite2pg creates returns the
//! rows SQLite's returns, in the same order where the view orders them; a view that does not
//! translate is named, with the reason, and so is every view that reads it.

mod common;

use common::*;

const SCHEMA: &str = r#"
    CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT NOT NULL, budget REAL,
      code TEXT COLLATE NOCASE);
    CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT, email TEXT, active BOOLEAN);
    CREATE TABLE tasks (id INTEGER PRIMARY KEY, project_id INTEGER, title TEXT, done INTEGER,
      hours INTEGER, est REAL, due TEXT);
    INSERT INTO projects VALUES (1, 'Zeta', 1500.5, 'zt'), (2, 'alpha', NULL, 'AL'),
      (3, 'Émile', 0.1, NULL), (4, 'beta', -2.25, 'bt'), (5, 'empty', 3e10, 'EM');
    INSERT INTO clients VALUES (1, 'Ann', 'ann@x.org', 1), (2, 'Bob', NULL, 0),
      (3, 'Ça', 'ca@x.org', 1), (4, NULL, 'n@x.org', NULL);
    INSERT INTO tasks VALUES
      (1, 1, 'write', 0, 3, 1.5, '2024-03-01'),
      (2, 1, 'test', 1, 2, 0.25, '2024-03-01 10:00:00'),
      (3, 2, 'ship', 0, NULL, 2.0, '2024-03-01T10:00:00Z'),
      (4, 2, 'Ship', 0, 5, NULL, NULL),
      (5, 3, 'résumé', 0, 1, 0.1, '2023-12-31 23:59:59.999'),
      (6, NULL, 'orphan', 0, 7, 1e-3, '2024-02-29'),
      (7, 4, NULL, 1, 0, -0.5, '2025-01-01'),
      (8, 1, 'write', 0, 4, 3.0, '2024-01-01');
    CREATE VIEW v_active AS SELECT id, name, email FROM clients WHERE active = 1;
    CREATE VIEW v_open AS SELECT t.id, t.title, p.name AS project, t.due
      FROM tasks t JOIN projects p ON p.id = t.project_id WHERE t.done = 0;
    CREATE VIEW v_all AS SELECT p.name, t.title, t.id FROM projects p
      LEFT JOIN tasks t ON t.project_id = p.id ORDER BY p.name, t.title, t.id;
    CREATE VIEW v_counts AS SELECT project_id, count(*) AS n, sum(hours) AS h,
      max(title) AS last_title, min(est) AS min_est, avg(hours) AS mean, count(due)
      FROM tasks GROUP BY project_id;
    CREATE VIEW v_busy AS SELECT project, count(*) AS open FROM v_open GROUP BY project
      HAVING count(*) > 1 ORDER BY open DESC, project;
    CREATE VIEW v_recent AS SELECT id, due FROM tasks WHERE due >= '2024-01-01' ORDER BY due DESC, id;
    CREATE VIEW v_calc AS SELECT id, hours * 2 AS dbl, est * 1.5 AS scaled,
      upper(title) || '!' AS shout, length(title) AS len, coalesce(due, 'none') AS due_or,
      hours > 2 AS big, CASE WHEN est IS NULL THEN 'n/a' WHEN est < 1 THEN 'small' ELSE 'large' END AS size
      FROM tasks;
    CREATE VIEW v_star AS SELECT * FROM projects;
    CREATE VIEW v_codes AS SELECT id FROM projects WHERE code = 'em' ORDER BY code, id;
    CREATE VIEW v_titles AS SELECT DISTINCT title FROM tasks ORDER BY title;
    CREATE VIEW v_shadow AS SELECT upper(name) AS name, id FROM projects ORDER BY name DESC;
    CREATE VIEW v_by_code AS SELECT code, count(*) AS n FROM projects GROUP BY code;
    CREATE VIEW v_bad AS SELECT printf('%5.1f', est) AS shown FROM tasks;
    CREATE VIEW v_on_bad AS SELECT * FROM v_bad;
"#;

/// One value, as both sides can give it.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum V {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

fn sqlite_rows(src: &SqliteFile, view: &str) -> Vec<Vec<V>> {
    let conn = src.conn();
    let mut st = conn.prepare(&format!("SELECT * FROM \"{view}\"")).unwrap();
    let n = st.column_count();
    st.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => V::Null,
                    rusqlite::types::ValueRef::Integer(i) => V::Int(i),
                    rusqlite::types::ValueRef::Real(f) => V::Real(f),
                    rusqlite::types::ValueRef::Text(t) => {
                        V::Text(String::from_utf8_lossy(t).into_owned())
                    }
                    rusqlite::types::ValueRef::Blob(_) => panic!("no BLOBs in these views"),
                })
            })
            .collect()
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

fn pg_rows_typed(c: &mut postgres::Client, view: &str) -> Vec<Vec<V>> {
    use postgres::types::Type;
    let rows = c
        .query(format!("SELECT * FROM \"{view}\"").as_str(), &[])
        .unwrap_or_else(|e| panic!("{view}: {e:?}"));
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| match *r.columns()[i].type_() {
                    Type::INT8 => r.get::<_, Option<i64>>(i).map_or(V::Null, V::Int),
                    Type::INT4 => r
                        .get::<_, Option<i32>>(i)
                        .map_or(V::Null, |v| V::Int(v.into())),
                    Type::FLOAT8 => r.get::<_, Option<f64>>(i).map_or(V::Null, V::Real),
                    Type::TEXT => r.get::<_, Option<String>>(i).map_or(V::Null, V::Text),
                    ref other => panic!("{view}: column {i} is {other}"),
                })
                .collect()
        })
        .collect()
}

#[test]
fn every_view_sqlite2pg_creates_returns_sqlites_rows() {
    let src = SqliteFile::new(SCHEMA);
    let p = src.path.to_str().unwrap();
    let out = sqlite2pg(&["--source", p, "check"]);
    let report = text(&out);
    for needle in [
        "WARNING: v_bad: view is not created on Postgres: printf('%5.1f', est): printf()'s conversions",
        "WARNING: v_on_bad: view is not created on Postgres: it reads v_bad, which is neither a table sqlite2pg copies nor a view it translates",
        "note: v_busy: view is created on Postgres by `cutover`",
        "WARNING: v_by_code: view is not created on Postgres: GROUP BY on text under NOCASE or RTRIM",
    ] {
        assert!(report.contains(needle), "missing {needle:?}:\n{report}");
    }
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.stop());
    let mut c = db.client();
    let ordered = [
        "v_all", "v_busy", "v_recent", "v_codes", "v_titles", "v_shadow",
    ];
    let views = [
        "v_active", "v_open", "v_all", "v_counts", "v_busy", "v_recent", "v_calc", "v_star",
        "v_codes", "v_titles", "v_shadow",
    ];
    for v in views {
        let mut want = sqlite_rows(&src, v);
        let mut got = pg_rows_typed(&mut c, v);
        assert!(
            !want.is_empty() || v == "v_codes",
            "{v}: no rows to compare"
        );
        if !ordered.contains(&v) {
            let key = |r: &Vec<V>| format!("{r:?}");
            want.sort_by_key(key);
            got.sort_by_key(key);
        }
        assert_eq!(got, want, "view {v}");
    }
    let missing: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM pg_views WHERE viewname IN ('v_bad', 'v_on_bad', 'v_by_code')",
    );
    assert_eq!(missing, 0);
}
