//! The SQL sqlite2pg installs or keeps as its own state, read from `sql/` at build time: the
//! numbered format steps of each side (a fresh install runs them all, an older install the
//! ones it lacks) and the templates of the triggers it puts into the app's SQLite file.

/// Format steps of sqlite2pg's objects in the app's SQLite file, oldest first.
pub const SQLITE_STEPS: &[(i64, &str)] = &[
    (1, include_str!("../sql/sqlite/0001_changelog.sql")),
    (
        2,
        include_str!("../sql/sqlite/0002_resync_and_fence_lease.sql"),
    ),
];

/// Format steps of the `sqlite2pg` schema in Postgres, oldest first.
pub const PG_STEPS: &[(i32, &str)] = &[
    (1, include_str!("../sql/postgres/0001_state.sql")),
    (
        2,
        include_str!("../sql/postgres/0002_foreign_keys_and_images.sql"),
    ),
    (3, include_str!("../sql/postgres/0003_reverse.sql")),
    (4, include_str!("../sql/postgres/0004_settings.sql")),
    (5, include_str!("../sql/postgres/0005_tenants.sql")),
];

/// The format this build writes in SQLite.
pub const SQLITE_FORMAT: i64 = 2;

/// The format this build writes in Postgres.
pub const PG_FORMAT: i32 = 5;

const CAPTURE: &str = include_str!("../sql/sqlite/capture.sql");
const FENCE: &str = include_str!("../sql/sqlite/fence.sql");
const REVERSE: &str = include_str!("../sql/postgres/reverse.sql");

/// The statements of section `-- @name` of a template file, without comment lines (a
/// fragment may be spliced into one line of another).
fn section(file: &'static str, name: &str) -> String {
    let header = format!("-- @{name} ");
    let header_end = format!("-- @{name}");
    let mut lines = file
        .lines()
        .skip_while(|l| !(l.starts_with(&header) || l.trim_end() == header_end));
    lines.next();
    lines
        .take_while(|l| !l.starts_with("-- @"))
        .filter(|l| !l.trim_start().starts_with("--") && !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fills `{name}` placeholders. The values are quoted identifiers, ids and lists of them,
/// never values from the app's rows.
fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// A section of `sql/sqlite/capture.sql`, rendered.
pub fn capture(name: &str, vars: &[(&str, &str)]) -> String {
    render(&section(CAPTURE, name), vars)
}

/// The fence trigger of `sql/sqlite/fence.sql`, rendered.
pub fn fence(vars: &[(&str, &str)]) -> String {
    render(&section(FENCE, "fence"), vars)
}

/// A section of `sql/postgres/reverse.sql` (capture and fence on Postgres), rendered.
pub fn reverse(name: &str, vars: &[(&str, &str)]) -> String {
    render(&section(REVERSE, name), vars)
}

/// A string as a Postgres literal, for the few places that take no parameter (a trigger's
/// arguments). The `E''` form reads the same whatever `standard_conforming_strings` says.
pub fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_one_by_one_up_to_the_format() {
        for (i, (n, _)) in SQLITE_STEPS.iter().enumerate() {
            assert_eq!(*n, i as i64 + 1);
        }
        for (i, (n, _)) in PG_STEPS.iter().enumerate() {
            assert_eq!(*n, i as i32 + 1);
        }
        assert_eq!(SQLITE_STEPS.last().map(|s| s.0), Some(SQLITE_FORMAT));
        assert_eq!(PG_STEPS.last().map(|s| s.0), Some(PG_FORMAT));
    }

    #[test]
    fn every_template_exists_and_every_placeholder_is_known() {
        let known = [
            "table",
            "id",
            "trigger",
            "slots",
            "new_key",
            "old_key",
            "key_columns",
            "key_changed",
            "event",
            "holders",
            "t_key",
            "match",
            "alias",
            "rowid",
            "sign",
            "images",
            "image_columns",
            "values",
            "evicted",
            "evicted_values",
            "x_values",
            "extra",
            "body",
            "message",
            "when",
            "function",
            "new_key",
            "old_row",
            "new_row",
            "tenant",
        ];
        for (file, name) in [
            (CAPTURE, "key_insert"),
            (CAPTURE, "key_delete"),
            (CAPTURE, "key_update"),
            (CAPTURE, "key_moved"),
            (CAPTURE, "key_evicts"),
            (CAPTURE, "key_holder"),
            (CAPTURE, "image"),
            (CAPTURE, "image_evicted"),
            (CAPTURE, "image_holders"),
            (CAPTURE, "trigger"),
            (CAPTURE, "drop"),
            (FENCE, "fence"),
            (REVERSE, "capture_function"),
            (REVERSE, "capture_rows"),
            (REVERSE, "capture_statements"),
            (REVERSE, "capture_truncate"),
            (REVERSE, "capture_notify"),
            (REVERSE, "fence"),
            (REVERSE, "unfence"),
            (REVERSE, "uncapture"),
        ] {
            let s = section(file, name);
            assert!(!s.is_empty(), "section {name} is missing");
            let vars: Vec<(&str, &str)> = known.iter().map(|k| (*k, "x")).collect();
            let r = render(&s, &vars);
            assert!(!r.contains('{') && !r.contains('}'), "{name}: {r}");
            assert!(!r.contains("--"), "{name} keeps a comment: {r}");
        }
    }

    #[test]
    fn renders_a_trigger() {
        let s = capture(
            "key_insert",
            &[
                ("trigger", "\"_sqlite2pg_ai_3\""),
                ("table", "\"t\""),
                ("slots", "k1"),
                ("id", "3"),
                ("new_key", "NEW.\"id\""),
            ],
        );
        assert_eq!(
            s,
            "DROP TRIGGER IF EXISTS \"_sqlite2pg_ai_3\"; CREATE TRIGGER \"_sqlite2pg_ai_3\" AFTER INSERT ON \"t\" BEGIN INSERT INTO _sqlite2pg_changes (tbl, k1, at) VALUES (3, NEW.\"id\", julianday('now')); END;"
        );
    }
}
