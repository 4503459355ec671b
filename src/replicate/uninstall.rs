//! `uninstall`: what sqlite2pg put in both databases goes, and only that. Before the cutover
//! Postgres keeps its copy and state (a later run goes on), less any capture a refused
//! cutover left on its tables; after it, the migration is over one way or the other, and
//! Postgres' triggers, fence and state go too.

use std::time::Duration;

use crate::config::Config;
use crate::error::Result;
use crate::plan;
use crate::sqlite;

/// What `uninstall` removed from Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromPostgres {
    /// Nothing of sqlite2pg's that uninstall removes was there.
    Nothing,
    /// The capture a refused cutover had installed on the copied tables.
    ReverseCapture,
    /// After the cutover: triggers, fence and state (the tables stay, writable); the state
    /// schema too once no other tenant has a migration in it.
    Everything,
}

/// Removes sqlite2pg's objects from Postgres, as the migration's stage allows.
pub async fn postgres(cfg: &Config) -> Result<FromPostgres> {
    let Some(target) = &cfg.target else {
        return Ok(FromPostgres::Nothing);
    };
    let mut client = crate::pg::connect(target).await?;
    let tenant = cfg.tenant_id();
    let cut_over = crate::pg::state::cutover_load(&client, tenant)
        .await?
        .is_some();
    if !cut_over && !crate::pg::reverse::capture_installed(&client, &cfg.target_schema).await? {
        return Ok(FromPostgres::Nothing);
    }
    let (plan, _) = plan::load(cfg).await?;
    let tables: Vec<String> = plan.targets();
    if !cut_over {
        for t in &tables {
            crate::pg::reverse::uncapture(&client, &cfg.target_schema, t).await?;
        }
        return Ok(FromPostgres::ReverseCapture);
    }
    crate::pg::reverse::uninstall(&mut client, tenant, &cfg.target_schema, &tables).await?;
    Ok(FromPostgres::Everything)
}

/// What `uninstall` removed from the SQLite file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromSqlite {
    /// sqlite2pg's tables and triggers dropped.
    pub objects: usize,
    /// The cutover fence was up (SQLite is writable again now).
    pub was_fenced: bool,
}

/// Removes every sqlite2pg object from the SQLite file.
pub fn sqlite(cfg: &Config, busy: Duration) -> Result<FromSqlite> {
    let mut rw = sqlite::open_read_write(&cfg.source, busy)?;
    let was_fenced = sqlite::capture::fenced(&rw)?;
    let objects = sqlite::capture::uninstall(&mut rw)?;
    Ok(FromSqlite {
        objects,
        was_fenced,
    })
}
