//! Shrinking a failing scenario: drop runs of items, then single statements inside blocks,
//! keeping each cut that still fails, until nothing more can go or the time is spent.
//! Every statement may fail in SQLite without ending the scenario, so any cut stays runnable.

use std::time::{Duration, Instant};

use crate::scenario::{Item, Scenario};

/// The smallest scenario found within `budget` for which `fails` holds.
pub fn shrink(s: &Scenario, budget: Duration, fails: impl Fn(&Scenario) -> bool) -> Scenario {
    let deadline = Instant::now() + budget;
    let mut best = s.clone();
    // Items: halves, quarters, ... single items (ddmin's complement step).
    let mut chunk = best.items.len() / 2;
    while chunk >= 1 && Instant::now() < deadline {
        let mut start = 0;
        let mut cut_any = false;
        while start < best.items.len() && Instant::now() < deadline {
            let end = (start + chunk).min(best.items.len());
            let mut candidate = best.clone();
            candidate.items.drain(start..end);
            if !candidate.items.is_empty() && fails(&candidate) {
                best = candidate;
                cut_any = true;
            } else {
                start = end;
            }
        }
        if !cut_any {
            chunk /= 2;
        }
    }
    // Statements inside the remaining blocks, one at a time.
    let mut i = 0;
    while i < best.items.len() && Instant::now() < deadline {
        let mut j = 0;
        while j < block(&best.items[i]).map_or(0, Vec::len) && Instant::now() < deadline {
            let mut candidate = best.clone();
            if let Some(stmts) = block_mut(&mut candidate.items[i]) {
                stmts.remove(j);
            }
            if fails(&candidate) {
                best = candidate;
            } else {
                j += 1;
            }
        }
        i += 1;
    }
    best
}

fn block(item: &Item) -> Option<&Vec<String>> {
    match item {
        Item::Ddl(s) | Item::Tx { stmts: s, .. } => Some(s),
        _ => None,
    }
}

fn block_mut(item: &mut Item) -> Option<&mut Vec<String>> {
    match item {
        Item::Ddl(s) | Item::Tx { stmts: s, .. } => Some(s),
        _ => None,
    }
}

#[test]
fn shrinking_keeps_only_what_the_failure_needs() {
    let s = Scenario::parse(
        "journal wal\nddl\n  CREATE TABLE t (x)\n  CREATE TABLE u (y)\ntx commit\n  INSERT INTO t VALUES (1)\n  INSERT INTO t VALUES (2)\ncheck\nkill 5\ncheck\n",
    )
    .expect("parse");
    let small = shrink(&s, Duration::from_secs(5), |c| {
        let text = c.to_string();
        text.contains("CREATE TABLE t") && text.contains("VALUES (2)")
    });
    assert_eq!(
        small.to_string(),
        "ddl\n  CREATE TABLE t (x)\ntx commit\n  INSERT INTO t VALUES (2)\n"
    );
}
