//! Helpers of the fleet tests: a config file naming a fleet, tenant files, the fleet's status.

use std::path::{Path, PathBuf};

use super::*;

/// A config file naming the fleet (`fleet` is the body of its `[fleet]` table) and the target.
pub fn config(dir: &Path, db: &TestDb, fleet: &str) -> PathBuf {
    let path = dir.join("fleet.toml");
    std::fs::write(
        &path,
        format!("target = {:?}\n\n[fleet]\n{fleet}\n", db.url),
    )
    .unwrap();
    path
}

pub fn on_fleet(cfg: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    sqlite2pg(&all)
}

/// Runs `sql` on the tenant file `dir/name`. A new file is made whole beside it and moved in,
/// as a copied or restored file arrives: a daemon watching `dir` must not start the tenant on
/// half of it and be found caught up before the rest (its tables appear as a migration).
pub fn tenant_file(dir: &Path, name: &str, sql: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    if path.exists() {
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        return;
    }
    let aside = dir.join(format!(".{name}.making"));
    // Closed before the move: the last connection checkpoints and removes a WAL.
    rusqlite::Connection::open(&aside)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    std::fs::rename(&aside, &path).unwrap();
}

pub fn fleet_status(cfg: &Path) -> serde_json::Value {
    let out = on_fleet(cfg, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn phase_count(status: &serde_json::Value, phase: &str) -> i64 {
    status["phases"][phase].as_i64().unwrap_or(0)
}

/// A config file whose fleet is every `*.db` file in `tenants`.
pub fn glob_config(dir: &Path, db: &TestDb, tenants: &Path) -> PathBuf {
    config(
        dir,
        db,
        &format!("files = {:?}", format!("{}/*.db", tenants.display())),
    )
}

/// Waits up to `limit` for `tenant` (its file at `path`) to be caught up on Postgres.
pub fn wait_tenant_caught_up(path: &Path, url: &str, tenant: &str, limit: std::time::Duration) {
    wait_until(&format!("tenant {tenant} caught up"), limit, || {
        caught_up(path, url, tenant)
    });
}

/// The statements of `log` (Postgres' server log, `log_statement = all`), each with the
/// process that sent it; a statement over several lines is one.
pub fn logged_statements(log: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut open = false;
    for line in log.lines() {
        let prefixed = line.len() > 5
            && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && line.as_bytes()[4] == b'-';
        if !prefixed {
            if open && let Some(last) = out.last_mut() {
                last.1.push('\n');
                last.1.push_str(line);
            }
            continue;
        }
        open = false;
        let pid = line
            .split_once('[')
            .and_then(|(_, r)| r.split_once(']'))
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        let text = line
            .split_once("LOG:  statement: ")
            .map(|(_, s)| s)
            .or_else(|| {
                line.split_once("LOG:  execute ")
                    .and_then(|(_, s)| s.split_once(": "))
                    .map(|(_, s)| s)
            });
        if let Some(text) = text {
            out.push((pid, text.to_string()));
            open = true;
        }
    }
    out
}

/// Asserts that `tenant`'s rows of `table` in the shared schema `crm` are its file's: `row`
/// (an expression both databases compute alike) in `order`.
pub fn shared_rows_equal(
    path: &Path,
    c: &mut postgres::Client,
    tenant: &str,
    table: &str,
    row: &str,
    order: &str,
) {
    let sqlite = sqlite_rows(path, &format!("SELECT {row} FROM {table} ORDER BY {order}"));
    let pg: Vec<String> = c
        .query(
            &format!("SELECT {row} FROM crm.{table} WHERE tenant_id = $1 ORDER BY {order}"),
            &[&tenant],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sqlite, pg, "tenant {tenant}'s {table}");
}

/// A config file whose target logs every statement of sqlite2pg's sessions (and only of
/// those), for a fleet whose `[fleet]` table is `fleet`.
pub fn logging_config(dir: &Path, db: &TestDb, fleet: &str) -> PathBuf {
    let url = format!("{}?options=-c%20log_statement%3Dall", db.url);
    let path = dir.join("fleet.toml");
    std::fs::write(&path, format!("target = {url:?}\n\n[fleet]\n{fleet}\n")).unwrap();
    path
}

/// The `[fleet]` body of a shared-tables fleet in schema `crm` of every `*.db` in `tenants`.
pub fn shared_fleet(tenants: &Path) -> String {
    format!(
        "files = {:?}\nlayout = \"shared\"\nschema = \"crm\"",
        format!("{}/*.db", tenants.display())
    )
}

/// An `--exec` hook that writes the tenant and schema it is told into a file, and that file.
pub fn tenant_hook(dir: &Path) -> (String, PathBuf) {
    let out = dir.join("hook.txt");
    let hook = format!(
        "echo \"$SQLITE2PG_TENANT $SQLITE2PG_TENANT_SCHEMA\" > '{}'",
        out.display()
    );
    (hook, out)
}

/// Asserts that a tenant cut over one way has no way back: `fallback` and `check --reverse`
/// refuse, each saying `why`.
pub fn no_way_back(cfg: &Path, tenant: &str, why: &str) {
    for args in [
        &["--tenant", tenant, "fallback"][..],
        &["--tenant", tenant, "check", "--reverse"],
    ] {
        let out = on_fleet(cfg, args);
        assert!(!out.status.success(), "{args:?} refuses");
        assert!(text(&out).contains(why), "{args:?}: {}", text(&out));
    }
}

/// How many triggers (not Postgres' own, for constraints) are on the tables of `schema`.
pub fn triggers_in(c: &mut postgres::Client, schema: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid
         JOIN pg_namespace n ON n.oid = r.relnamespace WHERE n.nspname = $1 AND NOT t.tgisinternal",
        &[&schema],
    )
    .unwrap()
    .get(0)
}
