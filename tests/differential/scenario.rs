//! A scenario: one random app's whole life as plain text, one item per line, so a failure
//! prints as something a person can read, replay and keep as a regression case.
//!
//! ```text
//! journal wal            the file's journal mode
//! fk off                 the app connection's PRAGMA foreign_keys
//! lib shell              transactions run through the system sqlite3 shell (older library)
//! triggers recursive     the app sets PRAGMA recursive_triggers (REPLACE fires DELETE triggers)
//! ddl                    statements run in one transaction with foreign keys off (Alembic's way)
//!   CREATE TABLE ...
//! tx commit              one app transaction; `rollback` ends it with ROLLBACK
//!   INSERT ...
//! start                  start the daemon (snapshot, then stream)
//! kill 120               kill -9 the daemon 120 ms from now, and start it again
//! stop                   kill -9 the daemon; it stays down until the next `start`
//! pg-restart 400         stop Postgres, wait 400 ms, start it again
//! busy 700               another connection holds SQLite's write lock for 700 ms
//! check                  wait until caught up; compare both sides; ask `verify`
//! cutover                `sqlite2pg cutover`: the app moves to Postgres
//! pg-tx commit           one app transaction on Postgres, after the cutover
//!   UPDATE ...
//! fallback               `sqlite2pg fallback`: the app moves back to SQLite
//! ```
//!
//! After `cutover`, `check` waits for the reverse stream instead, and after `fallback` it
//! compares the two sides with no daemon running.

use std::fmt;

/// One line (with its block) of a scenario.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Journal(String),
    ForeignKeys(bool),
    ShellLibrary,
    RecursiveTriggers,
    Ddl(Vec<String>),
    Tx { commit: bool, stmts: Vec<String> },
    Start,
    Kill(u64),
    Stop,
    PgRestart(u64),
    Busy(u64),
    Check,
    Cutover,
    PgTx { commit: bool, stmts: Vec<String> },
    Fallback,
}

/// A whole scenario.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scenario {
    pub items: Vec<Item>,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            match item {
                Item::Journal(m) => writeln!(f, "journal {m}")?,
                Item::ForeignKeys(on) => writeln!(f, "fk {}", if *on { "on" } else { "off" })?,
                Item::ShellLibrary => writeln!(f, "lib shell")?,
                Item::RecursiveTriggers => writeln!(f, "triggers recursive")?,
                Item::Ddl(stmts) => {
                    writeln!(f, "ddl")?;
                    for s in stmts {
                        writeln!(f, "  {s}")?;
                    }
                }
                Item::Tx { commit, stmts } | Item::PgTx { commit, stmts } => {
                    let word = if matches!(item, Item::PgTx { .. }) {
                        "pg-tx"
                    } else {
                        "tx"
                    };
                    writeln!(f, "{word} {}", if *commit { "commit" } else { "rollback" })?;
                    for s in stmts {
                        writeln!(f, "  {s}")?;
                    }
                }
                Item::Start => writeln!(f, "start")?,
                Item::Kill(ms) => writeln!(f, "kill {ms}")?,
                Item::Stop => writeln!(f, "stop")?,
                Item::PgRestart(ms) => writeln!(f, "pg-restart {ms}")?,
                Item::Busy(ms) => writeln!(f, "busy {ms}")?,
                Item::Check => writeln!(f, "check")?,
                Item::Cutover => writeln!(f, "cutover")?,
                Item::Fallback => writeln!(f, "fallback")?,
            }
        }
        Ok(())
    }
}

impl Scenario {
    /// Parses the text form; the error names the line.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let mut items: Vec<Item> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let bad = || format!("line {}: cannot read {line:?}", n + 1);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(stmt) = line.strip_prefix("  ") {
                match items.last_mut() {
                    Some(Item::Ddl(stmts))
                    | Some(Item::Tx { stmts, .. })
                    | Some(Item::PgTx { stmts, .. }) => stmts.push(stmt.to_string()),
                    _ => return Err(bad()),
                }
                continue;
            }
            let (word, arg) = line.split_once(' ').unwrap_or((line, ""));
            let ms = || arg.parse::<u64>().map_err(|_| bad());
            items.push(match (word, arg) {
                ("journal", m) => Item::Journal(m.to_string()),
                ("fk", "on") => Item::ForeignKeys(true),
                ("fk", "off") => Item::ForeignKeys(false),
                ("lib", "shell") => Item::ShellLibrary,
                ("triggers", "recursive") => Item::RecursiveTriggers,
                ("ddl", "") => Item::Ddl(Vec::new()),
                ("tx", "commit") => Item::Tx {
                    commit: true,
                    stmts: Vec::new(),
                },
                ("tx", "rollback") => Item::Tx {
                    commit: false,
                    stmts: Vec::new(),
                },
                ("start", "") => Item::Start,
                ("kill", _) => Item::Kill(ms()?),
                ("stop", "") => Item::Stop,
                ("pg-restart", _) => Item::PgRestart(ms()?),
                ("busy", _) => Item::Busy(ms()?),
                ("check", "") => Item::Check,
                ("cutover", "") => Item::Cutover,
                ("pg-tx", "commit") => Item::PgTx {
                    commit: true,
                    stmts: Vec::new(),
                },
                ("pg-tx", "rollback") => Item::PgTx {
                    commit: false,
                    stmts: Vec::new(),
                },
                ("fallback", "") => Item::Fallback,
                _ => return Err(bad()),
            });
        }
        Ok(Scenario { items })
    }

    /// The number of SQL statements in it.
    pub fn statements(&self) -> usize {
        self.items
            .iter()
            .map(|i| match i {
                Item::Ddl(s) | Item::Tx { stmts: s, .. } | Item::PgTx { stmts: s, .. } => s.len(),
                _ => 0,
            })
            .sum()
    }
}

#[test]
fn the_text_form_reads_back_as_the_same_scenario() {
    let s = Scenario {
        items: vec![
            Item::Journal("wal".into()),
            Item::ForeignKeys(true),
            Item::ShellLibrary,
            Item::RecursiveTriggers,
            Item::Ddl(vec!["CREATE TABLE \"a b\" (x)".into()]),
            Item::Tx {
                commit: false,
                stmts: vec!["INSERT INTO \"a b\" VALUES ('it''s')".into()],
            },
            Item::Start,
            Item::Kill(12),
            Item::Stop,
            Item::PgRestart(300),
            Item::Busy(40),
            Item::Check,
            Item::Cutover,
            Item::PgTx {
                commit: true,
                stmts: vec!["UPDATE \"a b\" SET x = 'pg'".into()],
            },
            Item::Fallback,
        ],
    };
    assert_eq!(Scenario::parse(&s.to_string()), Ok(s));
    assert!(Scenario::parse("tx sometimes").is_err());
    assert!(Scenario::parse("  INSERT INTO t VALUES (1)").is_err());
}
