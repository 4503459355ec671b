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
