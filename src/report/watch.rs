//! `status --watch`: the status as a live view for people without Grafana. On a terminal it
//! redraws in place; piped, it prints one plain line per look.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use console::Term;
use tokio_postgres::Client;

use super::status::{self, Status};
use crate::error::{Error, ErrorKind, Result};
use crate::pg;
use crate::phase::Phase;
use crate::replicate::Databases;
use crate::shutdown::Shutdown;

/// How far back the lag history reaches.
const HISTORY: Duration = Duration::from_secs(60);

/// What the view remembers between looks: the lag of the last minute, the applied counter.
#[derive(Debug, Default)]
pub struct History {
    lag: VecDeque<(Instant, f64)>,
    applied: Option<(Instant, i64)>,
    rate: Option<f64>,
}

impl History {
    /// Takes in one look at the status, taken at `now`.
    pub fn record(&mut self, status: &Status, now: Instant) {
        self.take(status.lag_seconds, status.changes_applied, now);
    }

    fn take(&mut self, lag: Option<f64>, applied: Option<i64>, now: Instant) {
        if let Some(lag) = lag {
            self.lag.push_back((now, lag));
        }
        while self
            .lag
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > HISTORY)
        {
            self.lag.pop_front();
        }
        if let Some(applied) = applied {
            if let Some((at, before)) = self.applied {
                let secs = now.duration_since(at).as_secs_f64();
                // A new stream counts from zero again: no negative rate.
                if secs > 0.0 && applied >= before {
                    self.rate = Some((applied - before) as f64 / secs);
                }
            }
            self.applied = Some((now, applied));
        }
    }

    /// The lag of the last minute as a sparkline, scaled to its own maximum.
    fn sparkline(&self) -> String {
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let max = self.lag.iter().map(|(_, l)| *l).fold(0.0f64, f64::max);
        self.lag
            .iter()
            .map(|(_, l)| {
                if max <= 0.0 {
                    BARS[0]
                } else {
                    BARS[((l / max) * 7.0).round().clamp(0.0, 7.0) as usize]
                }
            })
            .collect()
    }

    fn max_lag(&self) -> Option<f64> {
        self.lag.iter().map(|(_, l)| *l).reduce(f64::max)
    }
}

fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.1} s")
    }
}

/// The view for a terminal: one line each for the phase, the fence, the lag (with its last
/// minute), the throughput, each table's snapshot progress, and what needs a person.
pub fn screen(status: &Status, history: &History, now_unix: f64) -> Vec<String> {
    let mut lines = Vec::new();
    let daemon = if status.daemon_running {
        "daemon running"
    } else {
        "no daemon running"
    };
    lines.push(format!("sqlite2pg  phase: {}  ({daemon})", status.phase));
    lines.push(format!("fence:     {}", fence_text(status, now_unix)));
    match (status.lag_seconds, status.lag_changes) {
        (Some(secs), Some(changes)) => lines.push(format!(
            "lag:       {} / {changes} changes behind (last minute max {})",
            seconds(secs),
            history.max_lag().map(seconds).unwrap_or_else(|| "-".into())
        )),
        _ => lines.push("lag:       - (not streaming yet)".into()),
    }
    lines.push(format!("           {}", history.sparkline()));
    if let (Some(c), Some(secs)) = (status.reverse_lag_changes, status.reverse_lag_seconds) {
        lines.push(format!(
            "reverse:   {} / {c} changes on Postgres not yet in SQLite (a fallback loses none)",
            seconds(secs)
        ));
    }
    lines.push(format!(
        "applied:   {} changes/s  (position {}, {} changes since the stream started)",
        history
            .rate
            .map(|r| format!("{r:.0}"))
            .unwrap_or_else(|| "-".into()),
        status
            .position
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into()),
        status.changes_applied.unwrap_or(0)
    ));
    for t in &status.tables {
        let pct = t
            .rows_total
            .filter(|n| *n > 0)
            .map(|n| format!("{:5.1}%", 100.0 * t.rows_copied as f64 / n as f64))
            .unwrap_or_else(|| "     ".into());
        lines.push(format!(
            "table {:<24} {:<8} {pct} {}/{} rows",
            t.table,
            t.phase.as_str(),
            t.rows_copied,
            t.rows_total
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into())
        ));
    }
    if !status.resync_pending.is_empty() {
        lines.push(format!(
            "re-synchronizing: {}",
            status.resync_pending.join(", ")
        ));
    }
    if let Some(w) = status::idle_capture(status) {
        lines.push(format!("capture:   {w}"));
    }
    lines.push(match &status.last_error {
        Some(e) if status.daemon_running => format!(
            "NEEDS A PERSON: {e} (the daemon waits and goes on by itself once this is fixed)"
        ),
        Some(e) => format!("last error: {e}"),
        None => "errors:    none".into(),
    });
    lines
}

fn fence_text(status: &Status, now_unix: f64) -> String {
    match &status.fence {
        Some(f) if f.permanent => "permanent: SQLite refuses writes (cut over)".into(),
        Some(f) if f.active => format!(
            "UP, raised by {}, lease ends in {:.1} s",
            f.holder,
            (f.until_unix - now_unix).max(0.0)
        ),
        _ => "none (the app writes to SQLite)".into(),
    }
}

/// One plain line for a pipe or a log: the same facts, no redrawing.
pub fn line(status: &Status, history: &History) -> String {
    let copied: i64 = status.tables.iter().map(|t| t.rows_copied).sum();
    let fence = match &status.fence {
        Some(f) if f.permanent => "permanent",
        Some(f) if f.active => "up",
        _ => "none",
    };
    format!(
        "phase={} daemon={} fence={fence} lag_s={} lag_changes={} applied_per_s={} rows_copied={copied} direction={} reverse_lag_changes={} error={}",
        status.phase,
        if status.daemon_running {
            "running"
        } else {
            "none"
        },
        status
            .lag_seconds
            .map(|s| format!("{s:.3}"))
            .unwrap_or_else(|| "-".into()),
        status
            .lag_changes
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        history
            .rate
            .map(|r| format!("{r:.0}"))
            .unwrap_or_else(|| "-".into()),
        status.direction,
        status
            .reverse_lag_changes
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into()),
        status
            .last_error
            .as_deref()
            .map(|e| format!("{e:?}"))
            .unwrap_or_else(|| "-".into()),
    )
}

/// Whether the migration can still change: a finished one needs no more looks.
pub fn finished(status: &Status) -> bool {
    matches!(status.phase, Phase::CutOver | Phase::FellBack) && !status.daemon_running
}

/// Looks at the status every `interval` and shows it on stdout until stopped, or until the
/// migration is finished. Postgres going away is shown and retried, not fatal: the view is
/// for watching exactly such moments.
pub async fn run(db: &Databases, interval: Duration, stop: &Shutdown) -> Result<()> {
    let term = Term::stdout();
    let redraw = term.is_term();
    let write = |e: std::io::Error| {
        Error::new(
            ErrorKind::Config,
            format!("cannot write the status to the terminal: {e}"),
        )
    };
    if redraw {
        term.hide_cursor().map_err(write)?;
        term.clear_screen().map_err(write)?;
    }
    let mut client: Option<Client> = None;
    let mut history = History::default();
    let outcome = loop {
        // A connect to a Postgres that is gone can hang for minutes: Ctrl-C must not wait.
        let Some(look) = stop.or_stop(look(db, &mut client)).await else {
            break Ok(());
        };
        let now = Instant::now();
        let lines = match &look {
            Ok(status) => {
                history.record(status, now);
                if redraw {
                    screen(status, &history, now_unix())
                } else {
                    vec![line(status, &history)]
                }
            }
            Err(e) => {
                client = None;
                vec![format!(
                    "cannot read the status (retrying every {:.0?}): {e}",
                    interval
                )]
            }
        };
        if let Err(e) = show(&term, redraw, &lines) {
            break Err(write(e));
        }
        if look.as_ref().is_ok_and(finished) {
            break Ok(());
        }
        if !stop.sleep(interval).await {
            break Ok(());
        }
    };
    if redraw {
        // The last view stays on screen; the prompt comes back below it.
        term.show_cursor().map_err(write)?;
    }
    outcome
}

async fn look(db: &Databases, client: &mut Option<Client>) -> Result<Status> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(pg::connect(&db.target).await?);
    }
    match client {
        Some(c) => status::collect(c, db).await,
        None => Err(Error::new(
            ErrorKind::TargetUnreachable,
            "no Postgres connection",
        )),
    }
}

fn show(term: &Term, redraw: bool, lines: &[String]) -> std::io::Result<()> {
    if !redraw {
        for l in lines {
            term.write_line(l)?;
        }
        return Ok(());
    }
    term.move_cursor_to(0, 0)?;
    let width = usize::from(term.size().1).max(20);
    for l in lines {
        term.clear_line()?;
        term.write_line(&console::truncate_str(l, width, "…"))?;
    }
    term.clear_to_end_of_screen()
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_comes_from_two_looks_and_a_restarted_stream_gives_no_negative_one() {
        let mut h = History::default();
        let t0 = Instant::now();
        h.take(None, Some(100), t0);
        assert_eq!(h.rate, None);
        h.take(None, Some(300), t0 + Duration::from_secs(2));
        assert_eq!(h.rate, Some(100.0));
        // The counter restarts with a new stream: the last rate stays, no negative one.
        h.take(None, Some(10), t0 + Duration::from_secs(3));
        assert_eq!(h.rate, Some(100.0));
        h.take(None, Some(30), t0 + Duration::from_secs(4));
        assert_eq!(h.rate, Some(20.0));
    }

    #[test]
    fn the_sparkline_scales_to_its_maximum_and_forgets_after_a_minute() {
        let mut h = History::default();
        let t0 = Instant::now();
        for (secs, lag) in [(0, 8.0), (30, 0.0), (40, 1.0), (50, 2.0)] {
            h.take(Some(lag), None, t0 + Duration::from_secs(secs));
        }
        assert_eq!(h.sparkline(), "█▁▂▃");
        assert_eq!(h.max_lag(), Some(8.0));
        h.take(Some(0.0), None, t0 + Duration::from_secs(61));
        // The 8 s from 61 s ago is gone: the rest scales to 2 s.
        assert_eq!(h.sparkline(), "▁▅█▁");
        assert_eq!(h.max_lag(), Some(2.0));
    }
}
