//! Command-line interface: flags, environment, the config file, and one function per command.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, FileConfig};
use crate::error::{Error, RetryPolicy};
use crate::plan;
use crate::replicate::{Databases, run, snapshot};
use crate::report::check;
use crate::shutdown::Shutdown;
use crate::switch;
use crate::{pg, sqlite};

/// Moves a live SQLite application to PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "sqlite2pg", version = VERSION, about)]
pub struct Args {
    /// TOML configuration file; flags override its values.
    #[arg(long, global = true, env = "SQLITE2PG_CONFIG")]
    pub config: Option<PathBuf>,
    /// The application's SQLite file.
    #[arg(long, global = true, env = "SQLITE2PG_SOURCE")]
    pub source: Option<PathBuf>,
    /// Postgres connection string (postgres://user:password@host/db or key=value pairs).
    #[arg(long, global = true, env = "SQLITE2PG_TARGET", hide_env_values = true)]
    pub target: Option<String>,
    /// Postgres schema that receives the tables.
    #[arg(long, global = true)]
    pub target_schema: Option<String>,
    /// Only these tables (comma-separated or repeated).
    #[arg(long, global = true, value_delimiter = ',')]
    pub include: Vec<String>,
    /// Leave these tables out (comma-separated or repeated).
    #[arg(long, global = true, value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Per-column override: TABLE.COLUMN=TYPE, TABLE.COLUMN=ENCODING or TABLE.COLUMN=TYPE:ENCODING.
    #[arg(long = "cast", global = true)]
    pub casts: Vec<String>,
    /// Two applied migrations to take as the same, SQLITE_VERSION=POSTGRES_VERSION, for an app
    /// that keeps one migration tree per database (repeated for several).
    #[arg(long = "equivalent-migration", global = true)]
    pub equivalent_migrations: Vec<String>,
    /// The one tenant of the config file's [fleet] a command is about (its file's name
    /// without the extension); without it, every tenant.
    #[arg(long, global = true)]
    pub tenant: Option<String>,
    /// Rows per snapshot chunk.
    #[arg(long, global = true)]
    pub chunk_rows: Option<usize>,
    /// How long SQLite reads wait for the app's write lock, in milliseconds.
    #[arg(long, global = true)]
    pub busy_timeout_ms: Option<u64>,
    /// Log format [default: human].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the configuration (file, environment, flags) without touching either database,
    /// and print every effective setting with its default.
    Check,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `cutover --orphans`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Orphans {
    /// Refuse to cut over while rows break a foreign key, listing them.
    Refuse,
    /// Cut over; those foreign keys are added NOT VALID and stay so (new rows are checked).
    Keep,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report how every table and column maps, and every value that would not survive the move.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The other way: what would not come back from Postgres to SQLite exactly as the app
        /// wrote it (before a fallback). Reads every row on Postgres.
        #[arg(long)]
        reverse: bool,
    },
    /// Install capture, copy a snapshot, then stream every change until stopped (SIGTERM/SIGINT).
    Run {
        /// Copy a snapshot and exit (capture stays installed; a later `run` streams from there).
        #[arg(long)]
        snapshot_only: bool,
        /// Fallback poll of the changelog when no file notification arrives, in milliseconds [default: 1000].
        #[arg(long)]
        poll_interval_ms: Option<u64>,
        /// Most changelog rows per SQLite read; a drain reads until the changelog's end and applies it all in one Postgres transaction [default: 10000].
        #[arg(long)]
        batch_changes: Option<usize>,
        /// Serve Prometheus /metrics and /healthz on HOST:PORT.
        #[arg(long)]
        metrics_addr: Option<String>,
        /// /healthz answers 503 when the replication lag exceeds this many seconds [default: 30].
        #[arg(long)]
        max_lag_seconds: Option<f64>,
        /// Print the DDL that would run and exit.
        #[arg(long)]
        dry_run: bool,
        /// A fleet's daemon (a [fleet] and no --tenant): the most Postgres connections it
        /// holds at once, whatever the number of tenants [default: 10].
        #[arg(long)]
        max_connections: Option<usize>,
    },
    /// Where the migration stands: phase, per-table progress, position, lag, last error.
    Status {
        /// Print as JSON.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Keep watching: redraw in place on a terminal (one plain line per look when piped)
        /// until Ctrl-C or the migration is cut over.
        #[arg(long)]
        watch: bool,
        /// Seconds between looks with --watch.
        #[arg(long, default_value_t = 2.0, requires = "watch")]
        interval: f64,
    },
    /// Compare both sides row by row (through the same conversion apply uses); exit 0 only if equal.
    Verify {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        /// Only these tables (comma-separated).
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        /// Example differences shown per table.
        #[arg(long, default_value_t = 10)]
        examples: usize,
    },
    /// Switch to Postgres: fence SQLite writes, drain, verify, move sequences, record the window.
    Cutover {
        /// Fence only once the replication lag is at most this many seconds.
        #[arg(long, default_value_t = 2.0)]
        max_lag: f64,
        /// How long to wait for the lag to get under --max-lag, in seconds.
        #[arg(long, default_value_t = 60.0)]
        wait: f64,
        /// Verify every row inside the window (default: the rows changed since the last full verify).
        #[arg(long)]
        full_verify: bool,
        /// Show what would happen, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run this shell command after a successful cutover (e.g. restart the bot on Postgres).
        #[arg(long)]
        exec: Option<String>,
        /// Rows whose foreign key finds no parent: refuse to cut over (listing them), or keep
        /// them and leave their foreign keys NOT VALID.
        #[arg(long, value_enum, default_value_t = Orphans::Refuse)]
        orphans: Orphans,
        /// How long the fence holds unless this cutover renews it, in seconds: if the cutover
        /// dies or hangs, the app writes to SQLite again after at most this long.
        #[arg(long, default_value_t = 5.0)]
        lease: f64,
        /// Lift a fence that a cutover left (killed, hung): the app writes to SQLite at once.
        /// Refused once the cutover is recorded.
        #[arg(long)]
        abort: bool,
        /// A fleet's cutover (no --tenant): seconds between one tenant's cutover and the next.
        #[arg(long, default_value_t = 0.0)]
        pace: f64,
    },
    /// Back to SQLite after a cutover without losing a write made on Postgres: fence Postgres
    /// writes, drain the reverse stream, verify, move AUTOINCREMENT counters, hand SQLite back.
    Fallback {
        /// Fence only once the reverse lag is at most this many seconds.
        #[arg(long, default_value_t = 2.0)]
        max_lag: f64,
        /// How long to wait for the lag to get under --max-lag, in seconds.
        #[arg(long, default_value_t = 60.0)]
        wait: f64,
        /// Show what would happen, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run this shell command after a successful fallback (e.g. point the bot at SQLite).
        #[arg(long)]
        exec: Option<String>,
        /// How long the Postgres fence holds unless this fallback renews it, in seconds: if the
        /// fallback dies or hangs, the app writes to Postgres again after at most this long.
        #[arg(long, default_value_t = 5.0)]
        lease: f64,
        /// How long the fence may wait for the app's open write transactions on Postgres, in
        /// seconds, before the fallback gives up (nothing fenced).
        #[arg(long, default_value_t = 5.0)]
        lock_wait: f64,
        /// Lift a Postgres fence that a fallback left (killed, hung): the app writes to
        /// Postgres at once. Refused once the fallback is recorded.
        #[arg(long)]
        abort: bool,
    },
    /// Configuration file commands.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Install the capture triggers and changelog in the SQLite file (`run` does this itself).
    Install {
        /// Print every statement it would run on this file, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove every trigger, table and fence of sqlite2pg from the SQLite file.
    Uninstall,
}

/// Caps glibc's malloc at two arenas, before the runtime starts its threads; a
/// `MALLOC_ARENA_MAX` in the environment is left to decide.
///
/// Each thread that allocates gets an arena of its own, up to eight per core, and memory a
/// tenant's drain frees in one arena is not reused by the next drain on another thread. A
/// fleet's daemon at 1,000 tenants and 500 writes a second peaked at 275 MB with the default
/// arenas, 241 MB with two and 234 MB with one, at the same CPU a write (BENCHMARKS.md).
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of glibc's allocator; M_ARENA_MAX caps the
        // arenas made from now on, and any value is valid.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Sets up `tracing` on stderr.
pub fn init_tracing(args: &Args) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // The flag wins; else the config file's `log_format` (an unreadable file is reported later).
    let from_file = args
        .config
        .as_deref()
        .and_then(|p| FileConfig::load(p).ok())
        .and_then(|f| f.log_format)
        .map(|f| f.eq_ignore_ascii_case("json"));
    let json = match args.log_format {
        Some(f) => matches!(f, LogFormat::Json),
        None => from_file.unwrap_or(false),
    };
    if json {
        builder.json().init()
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init()
    }
}

/// Renders an error for the operator: the message, its causes, and what to do next.
pub fn describe_error(e: &anyhow::Error) -> String {
    let ours = e.chain().find_map(|c| c.downcast_ref::<Error>());
    let mut out = match ours {
        Some(err) => format!("error [{}]: {e}", err.kind().label()),
        None => format!("error: {e}"),
    };
    for cause in e.chain().skip(1) {
        out.push_str(&format!("\n  caused by: {cause}"));
    }
    if let Some(err) = ours {
        let when = match err.kind().retry_policy() {
            RetryPolicy::RetryLater => "transient; re-running resumes where this run stopped",
            RetryPolicy::NeedsOperator => "needs a change before re-running",
        };
        out.push_str(&format!("\n  next step ({when}): {}", err.kind().hint()));
    }
    // The Postgres client never echoes the password, but a connection string can reach a
    // message through a cause we do not control: redact every line once more.
    out.lines()
        .map(crate::conninfo::redact_in_text)
        .collect::<Vec<_>>()
        .join("\n")
}

fn build_config(args: &Args) -> anyhow::Result<Config> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let flags = config::Flags {
        source: args.source.clone(),
        target: args.target.clone(),
        target_schema: args.target_schema.clone(),
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        casts: args.casts.clone(),
        equivalent_migrations: args.equivalent_migrations.clone(),
        chunk_rows: args.chunk_rows,
        busy_timeout_ms: args.busy_timeout_ms,
        tenant: args.tenant.clone(),
    };
    Ok(Config::merge(flags, file)?)
}

/// `--version`: the release, and the formats of its state on both sides.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (state format: SQLite ",
    "2",
    ", PostgreSQL ",
    "5",
    ")"
);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs the command and returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = build_config(&args)?;
    let checking = matches!(args.command, Command::Config { .. });
    let problems = cfg.problems();
    if !checking && !problems.is_empty() {
        anyhow::bail!(Error::new(
            crate::error::ErrorKind::Config,
            format!(
                "the configuration is not valid:\n  {}",
                problems.join("\n  ")
            )
        ));
    }
    if let Some(spec) = &cfg.fleet {
        return fleet_command(args.command, &cfg, spec);
    }
    dispatch(args.command, &cfg)
}

/// A command given a config file with a `[fleet]`: `check` and `status` of every tenant, or
/// any command on the one tenant `--tenant` names (its file, its schema, its state).
fn fleet_command(
    command: Command,
    cfg: &Config,
    spec: &crate::fleet::Spec,
) -> anyhow::Result<ExitCode> {
    match (command, &cfg.tenant) {
        (
            Command::Check {
                json,
                reverse: false,
            },
            _,
        ) => cmd_fleet_check(cfg, spec, json),
        (
            Command::Config {
                action: ConfigAction::Check,
            },
            _,
        ) => cmd_config_check(cfg),
        (
            Command::Status {
                json, watch: false, ..
            },
            None,
        ) => cmd_fleet_status(cfg, spec, json),
        (
            Command::Cutover {
                max_lag,
                wait,
                full_verify,
                dry_run,
                exec,
                orphans,
                lease,
                abort: false,
                pace,
            },
            None,
        ) => cmd_fleet_cutover(
            cfg,
            spec,
            SwitchFlags {
                max_lag,
                wait,
                dry_run,
                exec,
                lease,
                abort: false,
            },
            full_verify,
            orphans,
            Duration::from_secs_f64(pace.clamp(0.0, 86_400.0)),
        ),
        (
            command @ Command::Run {
                snapshot_only: false,
                dry_run: false,
                ..
            },
            None,
        ) => cmd_fleet_run(cfg, spec, RunFlags::of(command, cfg)),
        (command, Some(name)) => {
            let tenants = crate::fleet::tenants(spec)?;
            let Some(t) = tenants.iter().find(|t| &t.name == name) else {
                anyhow::bail!(Error::new(
                    crate::error::ErrorKind::Config,
                    format!("--tenant {name}: the fleet has no such tenant"),
                ));
            };
            if !t.present {
                anyhow::bail!(Error::new(
                    crate::error::ErrorKind::Config,
                    format!(
                        "tenant {name}: its file {} is not there; nothing is done to a tenant whose file is gone (it is never taken for an emptied database). Put the file back, or take it out of the fleet",
                        t.source.display()
                    ),
                ));
            }
            dispatch(command, &cfg.for_tenant(t))
        }
        (_, None) => Err(Error::new(
            crate::error::ErrorKind::Config,
            "this command works on one tenant of the fleet at a time: give --tenant NAME (`sqlite2pg config check` lists them). `check`, `status`, `run` and `cutover` take every tenant at once",
        )
        .into()),
    }
}

/// Runs a command on one SQLite file (a fleet's tenant is one too).
fn dispatch(command: Command, cfg: &Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { json, reverse } if reverse => cmd_check_reverse(cfg, json),
        Command::Check { json, .. } => cmd_check(cfg, json),
        command @ Command::Run { .. } => cmd_run(cfg, RunFlags::of(command, cfg)),
        Command::Status {
            json, watch: false, ..
        } => cmd_status(cfg, json),
        Command::Status {
            watch: true,
            interval,
            ..
        } => cmd_watch(cfg, interval),
        Command::Verify {
            json,
            tables,
            examples,
        } => cmd_verify(cfg, json, tables, examples),
        Command::Cutover {
            max_lag,
            wait,
            full_verify,
            dry_run,
            exec,
            orphans,
            lease,
            abort,
            pace: _,
        } => cmd_cutover(
            cfg,
            SwitchFlags {
                max_lag,
                wait,
                dry_run,
                exec,
                lease,
                abort,
            },
            full_verify,
            orphans,
        ),
        Command::Fallback {
            max_lag,
            wait,
            dry_run,
            exec,
            lease,
            lock_wait,
            abort,
        } => cmd_fallback(
            cfg,
            SwitchFlags {
                max_lag,
                wait,
                dry_run,
                exec,
                lease,
                abort,
            },
            lock_wait,
        ),
        Command::Config {
            action: ConfigAction::Check,
        } => cmd_config_check(cfg),
        Command::Install { dry_run } => cmd_install(cfg, dry_run),
        Command::Uninstall => cmd_uninstall(cfg),
    }
}

/// Prints what a command found: as JSON with `--json`, else in words.
fn render<R: serde::Serialize>(
    report: &R,
    json: bool,
    human: impl FnOnce(&R, &mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        human(report, &mut out)
    };
    written.context("cannot write the report to stdout")
}

fn busy(cfg: &Config) -> Duration {
    Duration::from_millis(cfg.busy_timeout_ms)
}

fn cmd_check(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    if cfg.target.is_none() {
        tracing::info!("no --target: checking against the schema sqlite2pg would create");
    }
    let report = check_report(cfg, &rt)?;
    render(&report, json, check::print_human)?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `check` of a fleet: every tenant (or the one `--tenant` names), each into its schema.
fn cmd_fleet_check(
    cfg: &Config,
    spec: &crate::fleet::Spec,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::report::fleet::{FleetCheck, Outcome, TenantCheck};
    let rt = runtime()?;
    let tenants = crate::fleet::tenants(spec)?;
    let mut checked = Vec::new();
    for t in tenants
        .iter()
        .filter(|t| cfg.tenant.as_ref().is_none_or(|n| *n == t.name))
    {
        let outcome = if !t.present {
            Outcome::Missing
        } else {
            match check_report(&cfg.for_tenant(t), &rt) {
                Ok(report) => Outcome::Checked { report },
                Err(e) => Outcome::Failed {
                    error: describe_error(&e),
                },
            }
        };
        checked.push(TenantCheck {
            tenant: t.name.clone(),
            schema: t.schema.clone(),
            source: t.source.display().to_string(),
            outcome,
        });
    }
    let fleet = FleetCheck::new(checked);
    render(&fleet, json, crate::report::fleet::print_human)?;
    Ok(if fleet.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `status` of a fleet: every tenant's, on one connection, and the fleet at a glance.
fn cmd_fleet_status(
    cfg: &Config,
    spec: &crate::fleet::Spec,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::report::fleet::{FleetStatus, TenantStatus};
    let rt = runtime()?;
    let client = rt.block_on(pg::connect(cfg.require_target()?))?;
    let mut tenants = Vec::new();
    for t in crate::fleet::tenants(spec)? {
        let (status, error) = if !t.present {
            (None, Some("its file is not there".to_string()))
        } else {
            let one = async {
                let db = Databases::of(&cfg.for_tenant(&t))?;
                crate::report::status::collect(&client, &db).await
            };
            match rt.block_on(one) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e.to_string())),
            }
        };
        tenants.push(TenantStatus {
            tenant: t.name.clone(),
            schema: t.schema.clone(),
            source: t.source.display().to_string(),
            status,
            error,
        });
    }
    // Tenants with a migration in Postgres whose file the glob no longer finds.
    for name in rt.block_on(crate::pg::state::registered(&client))? {
        if !name.is_empty() && !tenants.iter().any(|t| t.tenant == name) {
            tenants.push(TenantStatus {
                tenant: name,
                schema: String::new(),
                source: String::new(),
                status: None,
                error: Some("its file is gone: the fleet's files no longer include it (its state stays in Postgres; `uninstall --tenant` needs the file)".into()),
            });
        }
    }
    render(
        &FleetStatus::new(tenants),
        json,
        crate::report::fleet::print_status,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `cutover` of a fleet: each tenant not cut over yet, one after another, `pace` apart, each
/// with its own fence, lease, window and hook. It stops at the first tenant that fails,
/// saying which are done; a tenant whose file is gone is left out and named.
fn cmd_fleet_cutover(
    cfg: &Config,
    spec: &crate::fleet::Spec,
    flags: SwitchFlags,
    full_verify: bool,
    orphans: Orphans,
    pace: Duration,
) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let stop = Shutdown::on_signals(&rt, || {});
    let client = rt.block_on(pg::connect(cfg.require_target()?))?;
    let mut done: Vec<String> = Vec::new();
    let mut already: Vec<String> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let mut hooks_failed: Vec<String> = Vec::new();
    let tenants = crate::fleet::tenants(spec)?;
    let summary = |done: &[String], already: &[String], missing: &[String]| {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        format!(
            "cut over now: {} ({}); cut over before: {}; file missing, left out: {}",
            done.len(),
            list(done),
            list(already),
            list(missing)
        )
    };
    for (i, t) in tenants.iter().enumerate() {
        if !t.present {
            missing.push(t.name.clone());
            continue;
        }
        let tenant_cfg = cfg.for_tenant(t);
        let cut = rt.block_on(crate::pg::state::cutover_load(&client, &t.name))?;
        if cut.is_some() {
            already.push(t.name.clone());
            continue;
        }
        if !done.is_empty() && !pace.is_zero() && !rt.block_on(stop.sleep(pace)) {
            println!(
                "fleet cutover interrupted before tenant {}; {}",
                t.name,
                summary(&done, &already, &missing)
            );
            return Ok(ExitCode::from(INTERRUPTED));
        }
        println!("== tenant {} ({} of {})", t.name, i + 1, tenants.len());
        let outcome = cmd_cutover(&tenant_cfg, flags.clone(), full_verify, orphans);
        let failed = match outcome {
            Ok(code) if code == ExitCode::SUCCESS => None,
            // The hook failed: the tenant is cut over, its app is not pointed at Postgres.
            Ok(code) if code == ExitCode::from(3) => {
                hooks_failed.push(t.name.clone());
                None
            }
            Ok(_) => Some("it did not cut over (see above)".to_string()),
            Err(e) => Some(describe_error(&e)),
        };
        if let Some(why) = failed {
            let left: Vec<&str> = tenants[i + 1..].iter().map(|t| t.name.as_str()).collect();
            println!(
                "fleet cutover stopped at tenant {}: {why}
{}; not tried: {}",
                t.name,
                summary(&done, &already, &missing),
                if left.is_empty() {
                    "none".to_string()
                } else {
                    left.join(", ")
                }
            );
            return Ok(ExitCode::from(1));
        }
        if !flags.dry_run {
            done.push(t.name.clone());
        }
        if stop.requested() {
            println!(
                "fleet cutover interrupted after tenant {}; {}",
                t.name,
                summary(&done, &already, &missing)
            );
            return Ok(ExitCode::from(INTERRUPTED));
        }
    }
    println!("fleet cutover done: {}", summary(&done, &already, &missing));
    if !hooks_failed.is_empty() {
        println!(
            "--exec hook failed for: {} (cut over; point their apps at Postgres by hand)",
            hooks_failed.join(", ")
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// The check of one file.
fn check_report(cfg: &Config, rt: &tokio::runtime::Runtime) -> anyhow::Result<check::Report> {
    let (plan, mut client) = rt.block_on(plan::load(cfg))?;
    // Tables the app's migrations made: what their schema already does is read from Postgres.
    let target = match &client {
        Some(c)
            if plan
                .tables
                .iter()
                .any(|t| matches!(t.mode, plan::Target::Existing)) =>
        {
            Some(rt.block_on(crate::pg::catalog::behaviours(c, &cfg.target_schema))?)
        }
        _ => None,
    };
    let seeded = match client.as_mut() {
        Some(c) => rt.block_on(check::seeded_findings(c, &plan, cfg))?,
        None => Vec::new(),
    };
    let conn = sqlite::open_read_only(&cfg.source, busy(cfg))?;
    let mut report = check::run(
        &conn,
        &plan,
        &cfg.target_schema,
        cfg.chunk_rows,
        target.as_ref(),
        cfg.tenant_column.is_some(),
        cfg.one_way,
    )?;
    report.add(seeded);
    Ok(report)
}

/// Refuses `what`, a way back to SQLite, for a fleet tenant whose cutover is one way
/// ([`crate::replicate::Databases::two_way`]).
fn refuse_one_way(cfg: &Config, what: &str) -> anyhow::Result<()> {
    let why = if cfg.tenant_column.is_some() {
        "the fleet's layout is shared tables, whose cutover is one way: Postgres captures no tenant's writes there (a capture on a shared table would take every tenant's), so there is no way back to SQLite that keeps them. Nothing was changed. For a tenant that needs one, use layout = \"schemas\""
    } else if cfg.one_way {
        "the fleet says one_way = true, so its cutover is one way: Postgres captures none of the app's writes (no trigger on its tables, as Citus requires), so there is no way back to SQLite that keeps them. Nothing was changed. A later migration needs one_way off before its cutover"
    } else {
        return Ok(());
    };
    anyhow::bail!(Error::new(
        crate::error::ErrorKind::Config,
        format!("{what} of tenant {}: {why}", cfg.tenant_id())
    ));
}

fn cmd_check_reverse(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    refuse_one_way(cfg, "check --reverse")?;
    let rt = runtime()?;
    cfg.require_target()?;
    let (plan, client) = rt.block_on(plan::load(cfg))?;
    let mut client = client.context("check --reverse reads Postgres: pass --target")?;
    let conn = sqlite::open_read_only(&cfg.source, busy(cfg))?;
    let report = rt.block_on(crate::report::reverse_check::run(
        &mut client,
        &plan,
        &conn,
        &cfg.target_schema,
    ))?;
    render(&report, json, crate::report::reverse_check::print_human)?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `run` settings from the command line.
struct RunFlags {
    run: run::Options,
    dry_run: bool,
    metrics_addr: Option<String>,
    max_lag: Duration,
    max_connections: usize,
}

/// A fleet's daemon's pool when `--max-connections` does not say.
const DEFAULT_MAX_CONNECTIONS: usize = 10;

impl RunFlags {
    /// The `run` command's flags over the config file's.
    fn of(command: Command, cfg: &Config) -> RunFlags {
        let Command::Run {
            snapshot_only,
            poll_interval_ms,
            batch_changes,
            metrics_addr,
            max_lag_seconds,
            dry_run,
            max_connections,
        } = command
        else {
            unreachable!("RunFlags::of is given the run command")
        };
        RunFlags {
            run: run::Options {
                snapshot_only,
                poll_interval: Duration::from_millis(
                    poll_interval_ms.unwrap_or(cfg.poll_interval_ms).max(10),
                ),
                batch_changes: batch_changes.unwrap_or(cfg.batch_changes).max(1),
                link: None,
            },
            dry_run,
            metrics_addr: metrics_addr.or_else(|| cfg.metrics_addr.clone()),
            max_lag: Duration::from_secs_f64(
                max_lag_seconds.unwrap_or(cfg.max_lag_seconds).max(0.0),
            ),
            max_connections: max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        }
    }
}

fn capturable(plan: &plan::Plan) -> Vec<&crate::model::SourceTable> {
    plan.tables.iter().map(|t| &t.source).collect()
}

fn cmd_status(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let client = rt.block_on(pg::connect(cfg.require_target()?))?;
    let db = Databases::of(cfg)?;
    let mut status = rt.block_on(crate::report::status::collect(&client, &db))?;
    rt.block_on(crate::report::status::add_orphans(
        &client,
        &db.schema,
        &mut status,
    ))?;
    render(&status, json, crate::report::status::print_human)?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_watch(cfg: &Config, interval: f64) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let db = Databases::of(cfg)?;
    let stop = Shutdown::on_signals(&rt, || {});
    let every = Duration::from_secs_f64(interval.clamp(0.1, 3600.0));
    rt.block_on(crate::report::watch::run(&db, every, &stop))?;
    Ok(ExitCode::SUCCESS)
}

/// The exit code of a one-shot command stopped by SIGINT/SIGTERM before it could say anything
/// (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;

fn cmd_verify(
    cfg: &Config,
    json: bool,
    tables: Vec<String>,
    examples: usize,
) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    // Listening from the start: a signal while the plan loads ends in "no verdict" too.
    let shutdown = Shutdown::on_signals(&rt, || {});
    let (plan, client) = rt.block_on(plan::load(cfg))?;
    let mut client = client.context("verify needs a Postgres target: pass --target")?;
    let opts = crate::verify::Options {
        db: Databases::of(cfg)?,
        examples,
        tables,
        settle: Duration::from_secs(30),
    };
    let run = crate::verify::run_and_record(&mut client, &plan, &opts);
    let Some(report) = rt.block_on(shutdown.or_stop(run)).transpose()? else {
        eprintln!(
            "verify interrupted (SIGINT/SIGTERM) before it compared every table: no verdict; run it again"
        );
        return Ok(ExitCode::from(INTERRUPTED));
    };
    render(&report, json, crate::verify::print_human)?;
    Ok(if report.equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What cutover and fallback share on the command line.
#[derive(Clone)]
struct SwitchFlags {
    max_lag: f64,
    wait: f64,
    dry_run: bool,
    exec: Option<String>,
    lease: f64,
    abort: bool,
}

/// A switch command, set up: the plan, a connection, the shared knobs.
struct SwitchSetup {
    rt: tokio::runtime::Runtime,
    plan: plan::Plan,
    client: tokio_postgres::Client,
    opts: switch::Options,
}

fn switch_setup(cfg: &Config, flags: &SwitchFlags, what: &str) -> anyhow::Result<SwitchSetup> {
    let rt = runtime()?;
    cfg.require_target()?;
    let (plan, client) = rt.block_on(plan::load(cfg))?;
    let client =
        client.with_context(|| format!("{what} needs the Postgres target: pass --target"))?;
    let opts = switch::Options {
        db: crate::replicate::Databases::of(cfg)?,
        max_lag: Duration::from_secs_f64(flags.max_lag.max(0.0)),
        wait: Duration::from_secs_f64(flags.wait.max(0.0)),
        lease: Duration::from_secs_f64(flags.lease.clamp(0.5, 3600.0)),
    };
    Ok(SwitchSetup {
        rt,
        plan,
        client,
        opts,
    })
}

/// `--abort` and `--dry-run` of either switch, which print and end the command; `None` when
/// the switch itself is to run.
fn switch_abort_or_describe<S: switch::Side>(
    rt: &tokio::runtime::Runtime,
    side: &S,
    client: &mut tokio_postgres::Client,
    flags: &SwitchFlags,
) -> anyhow::Result<Option<ExitCode>> {
    let from = side.from();
    if flags.abort {
        match rt.block_on(side.abort(client))? {
            Some(holder) => {
                println!("{from} fence lifted (raised by {holder}): the app writes to {from} again")
            }
            None => println!("no {from} fence was up: the app writes to {from}"),
        }
        return Ok(Some(ExitCode::SUCCESS));
    }
    if flags.dry_run {
        for step in rt.block_on(switch::describe(side, client))? {
            println!("{step}");
        }
        return Ok(Some(ExitCode::SUCCESS));
    }
    Ok(None)
}

fn cmd_cutover(
    cfg: &Config,
    flags: SwitchFlags,
    full_verify: bool,
    orphans: Orphans,
) -> anyhow::Result<ExitCode> {
    use crate::switch::cutover::{self, Cutover};
    let SwitchSetup {
        rt,
        plan,
        mut client,
        opts,
    } = switch_setup(cfg, &flags, "cutover")?;
    let side = Cutover {
        plan: &plan,
        opts: &opts,
        full_verify,
        orphans: match orphans {
            Orphans::Refuse => cutover::OrphanPolicy::Refuse,
            Orphans::Keep => cutover::OrphanPolicy::Keep,
        },
    };
    if let Some(code) = switch_abort_or_describe(&rt, &side, &mut client, &flags)? {
        return Ok(code);
    }
    let shutdown = Shutdown::on_signals(&rt, || {});
    let outcome = rt.block_on(switch::run(&side, &mut client, &shutdown))?;
    let r = &outcome.record;
    println!(
        "cut over: writes were unavailable for {:.0} ms (fenced {}, done {}); {} rows verified; {} sequences moved; {} foreign keys added",
        r.window_ms,
        r.fenced_at,
        r.done_at,
        r.rows_verified,
        outcome.sequences_moved,
        outcome.foreign_keys.len()
    );
    println!(
        "Postgres is the database now: point the app at it. SQLite refuses writes with \"{}\"",
        sqlite::capture::FENCE_MESSAGE
    );
    if let (true, Some(column)) = (outcome.one_way, &cfg.tenant_column) {
        println!(
            "one way (shared tables): on Postgres the app names its tenant in column {column} ({}); no fallback",
            cfg.tenant_id()
        );
        let kept = outcome.kept_aside;
        if kept > 0 {
            println!(
                "{kept} foreign keys stay kept aside in sqlite2pg.foreign_key while other tenants stream into these tables: the last tenant's cutover adds them (docs/citus.md)"
            );
        }
    } else if outcome.one_way {
        println!(
            "one way ([fleet] one_way): Postgres captures none of the app's writes, so there is no fallback"
        );
    }
    // The hook (pointing the app at Postgres) runs before the foreign keys are validated:
    // validating reads every child row, and the app need not wait for it.
    let code = match &flags.exec {
        None => ExitCode::SUCCESS,
        Some(cmd) => run_exec_hook(cmd, cfg)?,
    };
    for fk in rt.block_on(cutover::validate_foreign_keys(
        &client,
        &outcome.foreign_keys,
    )) {
        match &fk.reason {
            None => println!("foreign key {}: validated", fk.foreign_key),
            Some(why) => println!(
                "foreign key {}: stays NOT VALID ({why}); new rows are checked. Fix the rows, then ALTER TABLE ... VALIDATE CONSTRAINT",
                fk.foreign_key
            ),
        }
    }
    Ok(code)
}

fn cmd_fallback(cfg: &Config, flags: SwitchFlags, lock_wait: f64) -> anyhow::Result<ExitCode> {
    use crate::switch::fallback::Fallback;
    refuse_one_way(cfg, "fallback")?;
    let SwitchSetup {
        rt,
        plan,
        mut client,
        opts,
    } = switch_setup(cfg, &flags, "fallback")?;
    let side = Fallback {
        plan: &plan,
        opts: &opts,
        lock_wait: Duration::from_secs_f64(lock_wait.clamp(0.01, 3600.0)),
    };
    if let Some(code) = switch_abort_or_describe(&rt, &side, &mut client, &flags)? {
        return Ok(code);
    }
    let shutdown = Shutdown::on_signals(&rt, || {});
    let outcome = rt.block_on(switch::run(&side, &mut client, &shutdown))?;
    let r = &outcome.record;
    if outcome.completed_earlier {
        println!(
            "the fallback recorded at {} is complete: SQLite is the app's database",
            r.done_at
        );
    }
    println!(
        "fell back: writes were unavailable for {:.0} ms (fenced {}, done {}); {} rows verified; {} AUTOINCREMENT counters moved",
        r.window_ms, r.fenced_at, r.done_at, r.rows_verified, r.sequences_moved
    );
    println!(
        "SQLite is the database again: point the app at it. Postgres refuses writes with \"{}\"; `sqlite2pg uninstall` removes sqlite2pg's objects from Postgres",
        crate::pg::reverse::FENCE_MESSAGE
    );
    match &flags.exec {
        None => Ok(ExitCode::SUCCESS),
        Some(cmd) => run_exec_hook(cmd, cfg),
    }
}

/// Runs a switch's `--exec` command, its output logged (redacted); exit 3 if it fails. A
/// fleet's tenant is named to it in `SQLITE2PG_TENANT`, with its file and schema in
/// `SQLITE2PG_TENANT_FILE` and `SQLITE2PG_TENANT_SCHEMA`, so that one hook points each tenant's
/// app at its database.
fn run_exec_hook(cmd: &str, cfg: &Config) -> anyhow::Result<ExitCode> {
    tracing::info!(command = %crate::conninfo::redact_in_text(cmd), "running the --exec hook");
    let mut hook = std::process::Command::new("sh");
    hook.args(["-c", cmd]);
    if let Some(tenant) = &cfg.tenant {
        hook.env("SQLITE2PG_TENANT", tenant)
            .env("SQLITE2PG_TENANT_FILE", &cfg.source)
            .env("SQLITE2PG_TENANT_SCHEMA", &cfg.target_schema);
    }
    let out = hook.output().context("cannot run the --exec command")?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        tracing::info!(output = %crate::conninfo::redact_in_text(line), "--exec");
    }
    match out.status.code() {
        Some(0) => {
            println!("--exec hook exited 0");
            Ok(ExitCode::SUCCESS)
        }
        code => {
            println!(
                "--exec hook failed (exit {}); the cutover itself is done",
                code.map(|c| c.to_string())
                    .unwrap_or_else(|| "by signal".into())
            );
            Ok(ExitCode::from(3))
        }
    }
}

fn cmd_config_check(cfg: &Config) -> anyhow::Result<ExitCode> {
    use crate::config::defaults as d;
    let problems = cfg.problems();
    match &cfg.fleet {
        Some(spec) => {
            for t in crate::fleet::tenants(spec).unwrap_or_default() {
                println!(
                    "tenant {} = {:?} -> schema {}{}",
                    t.name,
                    t.source.display().to_string(),
                    t.schema,
                    if t.present {
                        ""
                    } else {
                        "   # does not exist (yet)"
                    }
                );
            }
            println!(
                "one_way = {}   # cutovers: {}",
                spec.one_way,
                if spec.one_way {
                    "no trigger on Postgres, no fallback"
                } else {
                    "two way (capture on Postgres, fallback)"
                }
            );
        }
        None => println!(
            "source = {:?}{}",
            cfg.source.display().to_string(),
            if cfg.source.exists() {
                ""
            } else {
                "   # does not exist (yet)"
            }
        ),
    }
    println!(
        "target = {:?}",
        cfg.target
            .as_ref()
            .map(|t| t.redacted())
            .unwrap_or_else(|| "(none)".into())
    );
    println!(
        "target_schema = {:?}   # default {:?}",
        cfg.target_schema,
        d::TARGET_SCHEMA
    );
    println!("include = {:?}   # default: every table", cfg.include);
    println!("exclude = {:?}", cfg.exclude);
    println!(
        "chunk_rows = {}   # default {}",
        cfg.chunk_rows,
        d::CHUNK_ROWS
    );
    println!(
        "busy_timeout_ms = {}   # default {}",
        cfg.busy_timeout_ms,
        d::BUSY_TIMEOUT_MS
    );
    println!(
        "poll_interval_ms = {}   # default {}",
        cfg.poll_interval_ms,
        d::POLL_INTERVAL_MS
    );
    println!(
        "batch_changes = {}   # default {}",
        cfg.batch_changes,
        d::BATCH_CHANGES
    );
    println!(
        "metrics_addr = {:?}   # default: no metrics endpoint",
        cfg.metrics_addr.clone().unwrap_or_default()
    );
    println!(
        "max_lag_seconds = {}   # default {}",
        cfg.max_lag_seconds,
        d::MAX_LAG_SECONDS
    );
    for c in &cfg.casts {
        println!(
            "cast {}.{} = {}{}",
            c.table,
            c.column,
            c.target_type.clone().unwrap_or_default(),
            c.encoding.map(|e| format!(" ({e:?})")).unwrap_or_default()
        );
    }
    if problems.is_empty() {
        println!("config: valid");
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("error: {p}");
        }
        Ok(ExitCode::from(2))
    }
}

fn cmd_install(cfg: &Config, dry_run: bool) -> anyhow::Result<ExitCode> {
    let conn = sqlite::open_read_only(&cfg.source, busy(cfg))?;
    let tables = sqlite::schema::read_tables(&conn)?;
    let plan = plan::build(&tables, None, &[], cfg);
    if dry_run {
        print!(
            "{}",
            sqlite::capture::install_script(&conn, &capturable(&plan))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    drop(conn);
    let rw = sqlite::open_read_write(&cfg.source, busy(cfg))?;
    let installed = sqlite::capture::install(&rw, &capturable(&plan))?;
    println!(
        "capture installed on {} tables (install {})",
        installed.tables.len(),
        installed.install_id
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_uninstall(cfg: &Config) -> anyhow::Result<ExitCode> {
    use crate::replicate::uninstall::{self, FromPostgres};
    if cfg.target.is_some() {
        let rt = runtime()?;
        match rt.block_on(uninstall::postgres(cfg)) {
            Ok(FromPostgres::Everything) => println!(
                "removed sqlite2pg's triggers, fence and state schema from Postgres; its tables stay as they are, writable"
            ),
            Ok(FromPostgres::ReverseCapture) => {
                println!("removed the reverse capture a cutover had installed on Postgres")
            }
            Ok(FromPostgres::Nothing) => {}
            Err(e) => eprintln!(
                "warning: Postgres was not cleaned ({}); the SQLite file is cleaned anyway. Run uninstall again once Postgres answers",
                crate::conninfo::redact_in_text(&e.to_string())
            ),
        }
    }
    let removed = uninstall::sqlite(cfg, busy(cfg))?;
    println!(
        "removed {} sqlite2pg objects; the SQLite file is as the app made it",
        removed.objects
    );
    if removed.was_fenced {
        println!(
            "the cutover fence is lifted: SQLite is writable again. Writes made on PostgreSQL since the cutover are NOT in this file unless the reverse stream applied them (`sqlite2pg fallback` is the way back that loses none)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_run(cfg: &Config, flags: RunFlags) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    if flags.dry_run {
        let (plan, _client) = rt.block_on(plan::load(cfg))?;
        print!("{}", snapshot::ddl_script(&plan, &cfg.target_schema));
        return Ok(ExitCode::SUCCESS);
    }
    cfg.require_target()?;
    if let Some(addr) = &flags.metrics_addr {
        crate::metrics::init(flags.max_lag)?;
        rt.block_on(crate::metrics::serve(addr))?;
    }
    let shutdown = Shutdown::on_signals(&rt, || {
        tracing::info!(
            "stopping: a drain in progress is rolled back, and the next run applies it again"
        )
    });
    rt.block_on(run::run(cfg, &flags.run, &shutdown))?;
    Ok(ExitCode::SUCCESS)
}

/// `run` of a fleet: one daemon following every tenant over a bounded pool of connections.
fn cmd_fleet_run(
    cfg: &Config,
    spec: &crate::fleet::Spec,
    flags: RunFlags,
) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    cfg.require_target()?;
    // Served for the fleet: its totals, and each tenant's phase, lag and waits.
    crate::metrics::init(flags.max_lag)?;
    if let Some(addr) = &flags.metrics_addr {
        rt.block_on(crate::metrics::serve(addr))?;
    }
    let shutdown = Shutdown::on_signals(&rt, || {
        tracing::info!(
            "stopping every tenant: a drain in progress is rolled back, and the next run applies it again"
        )
    });
    let opts = crate::replicate::fleet::Options {
        run: flags.run,
        max_connections: flags.max_connections,
    };
    rt.block_on(crate::replicate::fleet::run(cfg, spec, &opts, &shutdown))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_formats_this_build_writes() {
        assert!(super::VERSION.contains(&format!("SQLite {}", crate::sql::SQLITE_FORMAT)));
        assert!(super::VERSION.contains(&format!("PostgreSQL {}", crate::sql::PG_FORMAT)));
    }
}
