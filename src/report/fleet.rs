//! `check` of a fleet: each tenant's own check (its file into its schema), and the fleet at a
//! glance, so that one tenant's problem neither hides nor stops the others'.

use serde::Serialize;

use super::check;

/// What the check of one tenant found.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Checked: its report.
    Checked {
        /// The report, as `check` of its file alone gives it.
        report: check::Report,
    },
    /// Its file is not there.
    Missing,
    /// The check itself failed (a file that is not SQLite, Postgres gone): the error.
    Failed {
        /// The error, as the command would print it.
        error: String,
    },
}

/// One tenant's check.
#[derive(Debug, Serialize)]
pub struct TenantCheck {
    /// The tenant's name.
    pub tenant: String,
    /// Its Postgres schema.
    pub schema: String,
    /// Its SQLite file.
    pub source: String,
    /// What was found.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl TenantCheck {
    /// Clean when its report is.
    pub fn is_clean(&self) -> bool {
        matches!(&self.outcome, Outcome::Checked { report } if report.is_clean())
    }
}

/// The check of a fleet.
#[derive(Debug, Serialize)]
pub struct FleetCheck {
    /// Each tenant's, in file order.
    pub tenants: Vec<TenantCheck>,
    /// Tenants whose check is clean.
    pub clean: usize,
}

impl FleetCheck {
    /// The fleet's check from its tenants'.
    pub fn new(tenants: Vec<TenantCheck>) -> FleetCheck {
        let clean = tenants.iter().filter(|t| t.is_clean()).count();
        FleetCheck { tenants, clean }
    }

    /// Clean when every tenant is.
    pub fn is_clean(&self) -> bool {
        self.clean == self.tenants.len()
    }
}

/// Each tenant's report under its name, then the fleet in one line and the tenants to fix.
pub fn print_human(fleet: &FleetCheck, out: &mut impl std::io::Write) -> std::io::Result<()> {
    for t in &fleet.tenants {
        writeln!(
            out,
            "== tenant {} ({} -> schema {})",
            t.tenant, t.source, t.schema
        )?;
        match &t.outcome {
            Outcome::Checked { report } => check::print_human(report, out)?,
            Outcome::Missing => writeln!(
                out,
                "ERROR: the file is not there; the tenant is left out until it is (it is never taken for an emptied database)"
            )?,
            Outcome::Failed { error } => writeln!(out, "{error}")?,
        }
        writeln!(out)?;
    }
    let not_clean: Vec<&str> = fleet
        .tenants
        .iter()
        .filter(|t| !t.is_clean())
        .map(|t| t.tenant.as_str())
        .collect();
    if not_clean.is_empty() {
        writeln!(out, "fleet: all {} tenant(s) clean", fleet.tenants.len())
    } else {
        writeln!(
            out,
            "fleet: {} of {} tenant(s) clean; to fix first: {}",
            fleet.clean,
            fleet.tenants.len(),
            not_clean.join(", ")
        )
    }
}

/// Where one tenant stands, for the fleet's `status`.
#[derive(Debug, Serialize)]
pub struct TenantStatus {
    /// The tenant's name.
    pub tenant: String,
    /// Its Postgres schema.
    pub schema: String,
    /// Its SQLite file.
    pub source: String,
    /// Its status (`None`: it could not be read, see `error`).
    pub status: Option<super::status::Status>,
    /// Why its status could not be read (its file is gone, not SQLite, ...).
    pub error: Option<String>,
}

impl TenantStatus {
    /// The lag a person watches: the reverse one after the cutover.
    fn lag_seconds(&self) -> Option<f64> {
        let s = self.status.as_ref()?;
        s.reverse_lag_seconds.or(s.lag_seconds)
    }

    /// Why a person is needed, if one is: the error its daemon stopped on, or its status
    /// could not be read.
    fn needs_person(&self) -> Option<&str> {
        self.error
            .as_deref()
            .or_else(|| self.status.as_ref()?.last_error.as_deref())
    }
}

/// The fleet at a glance.
#[derive(Debug, Serialize)]
pub struct FleetStatus {
    /// Each tenant's, in file order.
    pub tenants: Vec<TenantStatus>,
    /// How many tenants are in each phase (by the phase's name; `unknown`: unreadable).
    pub phases: std::collections::BTreeMap<String, usize>,
    /// The tenants with the largest lag, worst first (at most [`WORST`]).
    pub worst_lag: Vec<(String, f64)>,
    /// The tenants waiting for a person, each with why.
    pub waiting: Vec<(String, String)>,
}

/// How many of the worst lags the fleet's status names.
pub const WORST: usize = 5;

/// How many tenants the human status lists one line each; past it, `--json` lists them.
const LISTED: usize = 50;

impl FleetStatus {
    /// The fleet's status from its tenants'.
    pub fn new(tenants: Vec<TenantStatus>) -> FleetStatus {
        let mut phases = std::collections::BTreeMap::new();
        for t in &tenants {
            let phase = t
                .status
                .as_ref()
                .map_or("unknown".to_string(), |s| s.phase.to_string());
            *phases.entry(phase).or_insert(0) += 1;
        }
        let mut worst_lag: Vec<(String, f64)> = tenants
            .iter()
            .filter_map(|t| Some((t.tenant.clone(), t.lag_seconds()?)))
            .filter(|(_, lag)| *lag > 0.0)
            .collect();
        worst_lag.sort_by(|a, b| b.1.total_cmp(&a.1));
        worst_lag.truncate(WORST);
        let waiting = tenants
            .iter()
            .filter_map(|t| Some((t.tenant.clone(), t.needs_person()?.to_string())))
            .collect();
        FleetStatus {
            tenants,
            phases,
            worst_lag,
            waiting,
        }
    }
}

/// The fleet in a few lines: phases counted, the worst lags, who waits for a person, then
/// one line per tenant while there are few.
pub fn print_status(fleet: &FleetStatus, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let phases: Vec<String> = fleet
        .phases
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    writeln!(
        out,
        "fleet:   {} tenant(s): {}",
        fleet.tenants.len(),
        phases.join(", ")
    )?;
    if fleet.worst_lag.is_empty() {
        writeln!(out, "lag:     every tenant caught up")?;
    } else {
        let worst: Vec<String> = fleet
            .worst_lag
            .iter()
            .map(|(t, lag)| format!("{t} {lag:.1} s"))
            .collect();
        writeln!(out, "lag:     worst {}", worst.join(", "))?;
    }
    if fleet.waiting.is_empty() {
        writeln!(out, "waiting: no tenant waits for a person")?;
    } else {
        writeln!(out, "waiting for a person ({}):", fleet.waiting.len())?;
        for (t, why) in &fleet.waiting {
            writeln!(out, "  {t}: {why}")?;
        }
    }
    if fleet.tenants.len() > LISTED {
        return writeln!(
            out,
            "({} tenants: `status --json` lists each, `status --tenant NAME` shows one in full)",
            fleet.tenants.len()
        );
    }
    writeln!(out)?;
    for t in &fleet.tenants {
        match &t.status {
            Some(s) => writeln!(
                out,
                "{:<24} {:<18} {:<10} lag {}",
                t.tenant,
                s.phase.to_string(),
                if s.daemon_running {
                    "daemon"
                } else {
                    "no daemon"
                },
                t.lag_seconds()
                    .map_or("-".to_string(), |l| format!("{l:.1} s"))
            )?,
            None => writeln!(out, "{:<24} unknown", t.tenant)?,
        }
    }
    Ok(())
}
