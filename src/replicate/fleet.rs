//! The fleet's daemon: one process following every tenant's file. Each tenant runs the
//! single-file daemon ([`super::run`]) with its own file, schema, state and locks, so that
//! guarantees 1 to 3 hold per tenant; what the tenants share is made here once for all:
//! - one file watcher over every tenant's directory, each wake-up routed to its tenant, and
//!   the directories rescanned when a file appears or goes (a new file is a new tenant, one
//!   gone is paused, never taken for emptied);
//! - one connection listening for the reverse capture's notifications, routed by tenant;
//! - one connection holding every tenant's presence lock (`status` sees the daemon);
//! - a bounded pool of Postgres connections ([`crate::pg::Limit`]): a tenant holds one only
//!   while it has work, lets it go when another waits, and a long backlog yields between
//!   batches, so one tenant neither starves the pool nor holds the others' lag hostage.
//!
//! Each tenant's daemon is a task of the runtime. A SQLite call may wait (a read for the app's
//! commit, a prune for a moment the app is outside a transaction), and one tenant's wait must
//! not hold up the others: such calls leave the runtime's worker
//! ([`tokio::task::block_in_place`]), and the stream's frequent reads try first with no wait
//! ([`crate::sqlite::read_now`]). A thread a tenant cost a thousand stacks and a hand-off
//! between threads at every Postgres round trip. A tenant that stops on an error waits alone
//! and is started again later; the others go on.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tracing::Instrument;

use super::FleetLink;
use super::run;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::fleet::{Spec, Tenant};
use crate::shutdown::{Backoff, Shutdown, Trigger};

/// How the fleet's daemon runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// What each tenant's daemon is given (its `link` is the fleet's).
    pub run: run::Options,
    /// The most Postgres connections the daemon holds at once.
    pub max_connections: usize,
}

/// The connections the daemon holds for the whole fleet (the listener and the presence
/// locks), which the tenants' pool does not get.
pub const SHARED_CONNECTIONS: usize = 2;

/// How often the tenants' files are listed again when no directory change said to.
const RESCAN: Duration = Duration::from_secs(10);

/// How long a tenant whose daemon stopped on an error waits before it is started again: from
/// a second (a file still being written, Postgres restarting under a new tenant's first
/// pass), doubling up to half a minute while it keeps stopping.
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// Where each wake-up goes: a file name in a directory to its tenant's link, a tenant's
/// name to its link (for Postgres' notifications).
#[derive(Default)]
struct Routes {
    files: HashMap<PathBuf, Vec<(String, FleetLink)>>,
    tenants: HashMap<String, FleetLink>,
}

impl Routes {
    /// The link of the tenant whose file (or -wal, -journal) is `path`.
    fn of_path(&self, path: &std::path::Path) -> Option<&FleetLink> {
        let dir = path.parent()?;
        let name = path.file_name()?.to_string_lossy();
        self.files.get(dir)?.iter().find_map(|(file, link)| {
            let rest = name.strip_prefix(file.as_str())?;
            (rest.is_empty() || rest.starts_with('-')).then_some(link)
        })
    }
}

/// A tenant the daemon runs.
struct Running {
    tenant: Tenant,
    /// When it started.
    started: Instant,
    /// Which start of the tenant this is (a tenant paused and back again is started anew
    /// while the old run may still be stopping).
    generation: u64,
    link: FleetLink,
    stop: Trigger,
}

/// How a tenant's daemon ended: its name and start, and its result.
type Ended = (String, u64, Result<()>);

/// Follows every tenant of the fleet until `shutdown`.
pub async fn run(cfg: &Config, spec: &Spec, opts: &Options, shutdown: &Shutdown) -> Result<()> {
    if opts.max_connections <= SHARED_CONNECTIONS {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "--max-connections {} leaves no connection for the tenants: the fleet's daemon keeps {SHARED_CONNECTIONS} for itself (the listener and the presence locks); give at least {}",
                opts.max_connections,
                SHARED_CONNECTIONS + 1
            ),
        ));
    }
    let target = cfg.require_target()?.clone();
    let pool = crate::pg::Limit::install(opts.max_connections);
    let routes: Arc<Mutex<Routes>> = Arc::default();
    let prunes = Arc::new(super::PruneTurns::default());
    let plans = Arc::new(crate::plan::SharedPlans::default());
    let rescan = Arc::new(Notify::new());
    let mut watcher = fleet_watcher(routes.clone(), rescan.clone())?;
    let mut watched: Vec<PathBuf> = Vec::new();
    let listener = tokio::spawn(listen(target.clone(), routes.clone(), shutdown.clone()));
    let mut presence: Option<tokio_postgres::Client> = None;
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    // When each tenant that stopped on an error is due to start again, and its last wait.
    let mut failed: HashMap<String, Instant> = HashMap::new();
    let mut waits: HashMap<String, Duration> = HashMap::new();
    let mut done: Vec<String> = Vec::new();
    let mut paused: Vec<String> = Vec::new();
    let mut generation = 0u64;
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<Ended>();
    let mut alive = 0usize;
    let mut presence_held: std::collections::HashSet<String> = Default::default();
    tracing::info!(
        max_connections = opts.max_connections,
        "following the fleet: each tenant's file into its schema"
    );
    loop {
        // A listing that fails says nothing of the files: the tenants running go on, nothing
        // is paused, and the next rescan lists again.
        // Listed off the runtime's threads: at thousands of files a listing takes a while,
        // and the tenants' connections are driven there.
        let listing = tokio::task::block_in_place(|| crate::fleet::tenants(spec));
        let (tenants, listed) = match listing {
            Ok(t) => (t, true),
            Err(e) => {
                tracing::error!(error = %e, "cannot list the fleet's files; listing again at the next rescan");
                (Vec::new(), false)
            }
        };
        for dir in tenants
            .iter()
            .filter_map(|t| t.source.parent().map(PathBuf::from))
        {
            if !watched.contains(&dir) {
                if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a tenant directory; its tenants are polled");
                }
                watched.push(dir);
            }
        }
        // Every running tenant shows as a live daemon (best effort: taken again on the next
        // rescan once Postgres answers).
        if presence.as_ref().is_none_or(|c| c.is_closed()) {
            presence = crate::pg::connect(&target).await.ok();
            presence_held.clear();
        }
        // A file a glob no longer finds is gone just as a listed one that is missing, and so
        // is a tenant whose migration is in Postgres when its file is not found (the daemon
        // started while it was away).
        let registered = match &presence {
            Some(c) => crate::pg::state::registered(c).await.unwrap_or_default(),
            None => Vec::new(),
        };
        let listed_names: std::collections::HashSet<&str> =
            tenants.iter().map(|t| t.name.as_str()).collect();
        let unlisted = |name: &str| !name.is_empty() && !listed_names.contains(name);
        let mut vanished: Vec<Tenant> = running
            .values()
            .filter(|r| unlisted(&r.tenant.name))
            .map(|r| Tenant {
                present: false,
                ..r.tenant.clone()
            })
            .collect();
        for name in registered.iter().filter(|n| unlisted(n)) {
            if !vanished.iter().any(|t| &t.name == name) {
                vanished.push(Tenant {
                    name: name.clone(),
                    source: PathBuf::from(format!("(the fleet's file of tenant {name})")),
                    schema: String::new(),
                    present: false,
                });
            }
        }
        if !listed {
            vanished.clear();
        }
        for t in tenants.iter().chain(&vanished) {
            let restart_due = failed.get(&t.name).is_none_or(|due| Instant::now() >= *due);
            if !t.present {
                let was_running = running.remove(&t.name).inspect(|r| {
                    r.stop.fire();
                    forget_routes(&routes, r);
                });
                if was_running.is_some()
                    && presence_held.contains(&t.name)
                    && let Some(c) = &presence
                {
                    let _ = crate::pg::state::release_presence(c, &t.name).await;
                    presence_held.remove(&t.name);
                }
                if was_running.is_some() || !paused.contains(&t.name) {
                    tracing::warn!(tenant = %t.name, file = %t.source.display(), "the tenant's file is gone: its stream is paused (never taken for an emptied database) until the file is back");
                    crate::metrics::tenant_file_missing(&t.name);
                    paused.push(t.name.clone());
                }
                continue;
            }
            if running.contains_key(&t.name) || !restart_due || done.contains(&t.name) {
                continue;
            }
            if let Some(i) = paused.iter().position(|n| n == &t.name) {
                paused.remove(i);
                tracing::info!(tenant = %t.name, "the tenant's file is back: following it again");
            }
            failed.remove(&t.name);
            let link = FleetLink {
                prunes: prunes.clone(),
                plans: plans.clone(),
                ..FleetLink::default()
            };
            {
                let mut r = routes.lock().unwrap_or_else(|e| e.into_inner());
                r.tenants.insert(t.name.clone(), link.clone());
                if let (Some(dir), Some(file)) = (t.source.parent(), t.source.file_name()) {
                    let entry = r.files.entry(dir.to_path_buf()).or_default();
                    let file = file.to_string_lossy().into_owned();
                    entry.retain(|(f, _)| *f != file);
                    entry.push((file, link.clone()));
                }
            }
            let (trigger, stop) = Shutdown::new();
            let tenant_cfg = cfg.for_tenant(t);
            let tenant_opts = run::Options {
                link: Some(link.clone()),
                ..opts.run.clone()
            };
            let name = t.name.clone();
            generation += 1;
            let this = generation;
            let ended = ended_tx.clone();
            let span = tracing::info_span!("tenant", tenant = %name);
            let work = async move {
                let work = crate::metrics::for_tenant(name.clone(), async move {
                    run::run(&tenant_cfg, &tenant_opts, &stop).await
                });
                // A panic (a bug) ends this tenant's run, said like an error, and the daemon
                // still knows the tenant is gone (its stop waits for every one).
                let r = std::panic::AssertUnwindSafe(work)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::new(
                            ErrorKind::State,
                            "the tenant's daemon panicked (a bug in sqlite2pg: its log above says where); it is started again later",
                        ))
                    });
                let _ = ended.send((name, this, r));
            };
            tokio::spawn(work.instrument(span));
            alive += 1;
            running.insert(
                t.name.clone(),
                Running {
                    tenant: t.clone(),
                    started: Instant::now(),
                    generation: this,
                    link,
                    stop: trigger,
                },
            );
        }
        crate::metrics::fleet_tenants(running.len(), paused.len(), failed.len());
        pool.close_idle();
        let (open, idle) = pool.in_use();
        crate::metrics::fleet_connections(open - idle, idle, pool.waiting());
        if let Some(c) = &presence {
            for name in running.keys() {
                if presence_held.contains(name) {
                    continue;
                }
                match crate::pg::state::take_presence(c, name).await {
                    Ok(_) => {
                        presence_held.insert(name.clone());
                    }
                    Err(e) => {
                        tracing::debug!(tenant = %name, error = %e, "cannot take the tenant's presence lock");
                        break;
                    }
                }
            }
        }
        // The next rescan, sooner when a stopped tenant is due to start again.
        let due = failed
            .values()
            .copied()
            .filter(|d| *d > Instant::now())
            .min()
            .map_or(RESCAN, |d| d.saturating_duration_since(Instant::now()));
        let next = tokio::time::sleep(RESCAN.min(due));
        tokio::pin!(next);
        // Waits for a rescan, a tenant that ends, or the stop.
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => {
                    for r in running.values() {
                        r.stop.fire();
                    }
                    while alive > 0 {
                        let Some((name, _, result)) = ended_rx.recv().await else { break };
                        alive -= 1;
                        if let Err(e) = result {
                            tracing::warn!(tenant = %name, error = %e, "the tenant's stream ended with an error while stopping");
                        }
                    }
                    listener.abort();
                    tracing::info!("stopped cleanly; `sqlite2pg run` resumes every tenant from its stored position");
                    return Ok(());
                }
                Some((name, ended, result)) = ended_rx.recv() => {
                    alive -= 1;
                    // A run stopped for a pause may end after its tenant started again.
                    if running.get(&name).is_none_or(|r| r.generation != ended) {
                        continue;
                    }
                    let gone = running.remove(&name);
                    match result {
                        Ok(()) => {
                            // Fallen back: nothing left to follow.
                            tracing::info!(tenant = %name, "the tenant's daemon is done");
                            done.push(name.clone());
                        }
                        Err(e) => {
                            // A run that went on a while before it stopped starts over short.
                            let wait = match (waits.get(&name), &gone) {
                                (Some(w), Some(r)) if r.started.elapsed() < RESTART_MAX => (*w * 2).min(RESTART_MAX),
                                _ => RESTART_FIRST,
                            };
                            waits.insert(name.clone(), wait);
                            tracing::error!(tenant = %name, error = %crate::conninfo::redact_in_text(&crate::error::chain_text(&e)), hint = e.kind().hint(), retry_in_secs = wait.as_secs_f64(), "the tenant's daemon stopped: the other tenants go on; it is started again later");
                            crate::metrics::needs_operator_for(&name, e.kind().label());
                            failed.insert(name.clone(), Instant::now() + wait);
                        }
                    }
                    if let Some(r) = gone {
                        forget_routes(&routes, &r);
                        if let Some(c) = &presence
                            && presence_held.contains(&name)
                        {
                            let _ = crate::pg::state::release_presence(c, &name).await;
                        }
                        presence_held.remove(&name);
                    }
                    crate::metrics::fleet_tenants(running.len(), paused.len(), failed.len());
                }
                _ = rescan.notified() => break,
                _ = &mut next => break,
            }
        }
    }
}

/// Stops routing wake-ups to a tenant's run that ended.
fn forget_routes(routes: &Mutex<Routes>, r: &Running) {
    let mut routes = routes.lock().unwrap_or_else(|e| e.into_inner());
    let same = |l: &FleetLink| Arc::ptr_eq(&l.file_changed, &r.link.file_changed);
    if routes.tenants.get(&r.tenant.name).is_some_and(same) {
        routes.tenants.remove(&r.tenant.name);
    }
    for list in routes.files.values_mut() {
        list.retain(|(_, l)| !same(l));
    }
}

/// One watcher for every tenant directory: a change to a tenant's file wakes that tenant;
/// a file made, removed or renamed in a directory asks for a rescan.
fn fleet_watcher(routes: Arc<Mutex<Routes>>, rescan: Arc<Notify>) -> Result<RecommendedWatcher> {
    notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Events were dropped (the kernel's queue overflowed): any tenant may have changed.
        if event.need_rescan() {
            rescan.notify_one();
            let routes = routes.lock().unwrap_or_else(|e| e.into_inner());
            for link in routes.tenants.values() {
                link.file_changed.notify_one();
            }
            return;
        }
        if asks_for_rescan(&event) {
            rescan.notify_one();
        }
        let routes = routes.lock().unwrap_or_else(|e| e.into_inner());
        for path in &event.paths {
            if let Some(link) = routes.of_path(path) {
                link.file_changed.notify_one();
            }
        }
    })
    .map_err(|e| {
        Error::with_source(
            ErrorKind::SourceUnreadable,
            "cannot start watching the fleet's files",
            e,
        )
    })
}

/// Whether a directory event may have changed the fleet's files: one made, removed or renamed,
/// other than SQLite's own beside a database. Those come and go with the app's connections and
/// transactions (a rollback journal at every commit), and a listing of thousands of files at
/// each would cost the daemon more than the writes.
fn asks_for_rescan(event: &notify::Event) -> bool {
    matches!(
        event.kind,
        notify::EventKind::Create(_)
            | notify::EventKind::Remove(_)
            | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
    ) && (event.paths.is_empty() || !event.paths.iter().all(|p| crate::fleet::is_companion(p)))
}

/// Listens for the reverse capture's notifications on one connection and wakes the tenant
/// each names. When the connection is lost, every tenant is woken once (a notification
/// may have been missed meanwhile), and it listens again.
async fn listen(target: crate::conninfo::TargetUrl, routes: Arc<Mutex<Routes>>, stop: Shutdown) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    while !stop.requested() {
        let listening = async {
            let (client, rx) = crate::pg::connect_listening(&target).await?;
            client
                .batch_execute(&format!("LISTEN {}", crate::pg::reverse::CHANNEL))
                .await
                .map_err(|e| Error::from_pg("cannot listen for the reverse capture", e))?;
            Ok::<_, Error>((client, rx))
        };
        match listening.await {
            Ok((_client, mut rx)) => {
                backoff.reset();
                wake_all(&routes);
                while let Some(tenant) = rx.recv().await {
                    let routes = routes.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(link) = routes.tenants.get(&tenant) {
                        link.pg_changed.notify_one();
                    }
                }
                wake_all(&routes);
            }
            Err(e) => tracing::debug!(error = %e, "cannot listen for the reverse capture yet"),
        }
        if !stop.sleep(backoff.next_wait()).await {
            return;
        }
    }
}

fn wake_all(routes: &Mutex<Routes>) {
    let routes = routes.lock().unwrap_or_else(|e| e.into_inner());
    for link in routes.tenants.values() {
        link.pg_changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_routed_to_the_tenant_whose_file_it_is() {
        let mut routes = Routes::default();
        let (a, ab) = (FleetLink::default(), FleetLink::default());
        routes.files.insert(
            PathBuf::from("/srv/bots"),
            vec![("a.db".into(), a.clone()), ("ab.db".into(), ab.clone())],
        );
        let is = |p: &str, l: &FleetLink| {
            routes
                .of_path(std::path::Path::new(p))
                .is_some_and(|x| Arc::ptr_eq(&x.file_changed, &l.file_changed))
        };
        assert!(is("/srv/bots/a.db", &a));
        assert!(is("/srv/bots/a.db-wal", &a));
        assert!(is("/srv/bots/a.db-journal", &a));
        assert!(is("/srv/bots/ab.db-shm", &ab));
        // Another file whose name starts like one: not the tenant's.
        assert!(
            routes
                .of_path(std::path::Path::new("/srv/bots/a.dbx"))
                .is_none()
        );
        assert!(
            routes
                .of_path(std::path::Path::new("/srv/other/a.db"))
                .is_none()
        );
    }

    #[test]
    fn only_a_file_that_may_be_a_tenant_asks_for_a_rescan() {
        use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};
        use notify::{Event, EventKind};
        let event = |kind: EventKind, paths: &[&str]| {
            paths
                .iter()
                .fold(Event::new(kind), |e, p| e.add_path(PathBuf::from(p)))
        };
        let made = EventKind::Create(CreateKind::File);
        let gone = EventKind::Remove(RemoveKind::File);
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        // A tenant arrives, leaves, or is renamed in (a copy made aside, then moved).
        assert!(asks_for_rescan(&event(made, &["/srv/bots/new.db"])));
        assert!(asks_for_rescan(&event(gone, &["/srv/bots/a.db"])));
        assert!(asks_for_rescan(&event(
            renamed,
            &["/srv/bots/.new.db.part", "/srv/bots/new.db"]
        )));
        // SQLite's own files, at every connection or (rollback journal) every commit: no.
        for f in [
            "/srv/bots/a.db-journal",
            "/srv/bots/a.db-wal",
            "/srv/bots/a.db-shm",
        ] {
            assert!(!asks_for_rescan(&event(made, &[f])), "{f}");
            assert!(!asks_for_rescan(&event(gone, &[f])), "{f}");
        }
        // A write to a tenant's file wakes the tenant, not the listing.
        let written = EventKind::Modify(ModifyKind::Data(DataChange::Content));
        assert!(!asks_for_rescan(&event(written, &["/srv/bots/a.db"])));
        // An event that names no file may be anything.
        assert!(asks_for_rescan(&event(made, &[])));
    }
}
