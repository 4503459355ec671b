//! Snapshot progress for a person: bars on a terminal, periodic log lines otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Reports rows copied per table.
pub struct Progress {
    bars: Option<(MultiProgress, HashMap<String, ProgressBar>)>,
    /// Rows done and total per table, for the metrics.
    totals: HashMap<String, (u64, u64)>,
    logged: HashMap<String, (Instant, u64, u64, Instant)>,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn new() -> Progress {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| (MultiProgress::new(), HashMap::new()));
        Progress {
            bars,
            logged: HashMap::new(),
            totals: HashMap::new(),
        }
    }

    /// A table's copy starts (or resumes at `done` of `total` rows).
    pub fn start(&mut self, table: &str, done: u64, total: u64) {
        crate::metrics::snapshot_progress(table, done, total);
        self.totals.insert(table.to_string(), (done, total));
        if let Some((multi, bars)) = &mut self.bars {
            let bar = multi.add(ProgressBar::new(total.max(done)));
            let style = ProgressStyle::with_template(
                "{prefix:>20} [{bar:30}] {pos}/{len} rows {rate} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} rows/s", state.per_sec());
                },
            )
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(table.to_string());
            bar.set_position(done);
            bars.insert(table.to_string(), bar);
        } else {
            tracing::info!(table, rows_done = done, rows_total = total, "copying table");
            let now = Instant::now();
            self.logged
                .insert(table.to_string(), (now, done, total, now));
        }
    }

    /// `rows` more rows of `table` are committed.
    pub fn advance(&mut self, table: &str, rows: u64) {
        self.totals.entry(table.to_string()).or_insert((0, 0)).0 += rows;
        if let Some((done, total)) = self.totals.get(table) {
            crate::metrics::snapshot_progress(table, *done, *total);
        }
        if let Some((_, bars)) = &self.bars {
            if let Some(bar) = bars.get(table) {
                bar.inc(rows);
            }
        } else if let Some((last, done, total, started)) = self.logged.get_mut(table) {
            *done += rows;
            if last.elapsed() >= LOG_EVERY {
                *last = Instant::now();
                let rate = *done as f64 / started.elapsed().as_secs_f64().max(0.001);
                let eta = (total.saturating_sub(*done)) as f64 / rate.max(1.0);
                tracing::info!(
                    table,
                    rows_done = *done,
                    rows_total = *total,
                    rows_per_sec = rate as u64,
                    eta_secs = eta as u64,
                    "copy progress"
                );
            }
        }
    }

    /// A table's copy is complete.
    pub fn finish(&mut self, table: &str, rows: u64, elapsed: Duration) {
        let rate = rows as f64 / elapsed.as_secs_f64().max(0.001);
        // On a terminal the finished bar is the record; a log line would tear the bars apart.
        if let Some(bar) = self.bars.as_ref().and_then(|(_, bars)| bars.get(table)) {
            bar.finish_with_message(format!("done in {:.1}s", elapsed.as_secs_f64()));
        } else {
            tracing::info!(
                table,
                rows,
                secs = elapsed.as_secs_f64(),
                rows_per_sec = rate as u64,
                "table copied"
            );
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}
