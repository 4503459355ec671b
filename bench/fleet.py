"""The fleet benchmark (issue 30), driven by bench/fleet: N small CRM files followed by one
daemon, against one file of the same total rows in the same sitting. Prints a Markdown report.

usage: fleet.py BIN URL WORKDIR [TENANTS] [SCALE]
"""
import json, os, shutil, sqlite3, statistics, subprocess, sys, threading, time, urllib.request, uuid

BIN, URL, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
N = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
SCALE = int(sys.argv[5]) if len(sys.argv) > 5 else 200
POOL = 10
BACKLOG = int(os.environ.get("BACKLOG", "1000000"))
BASE = URL.rsplit("/", 1)[0]
HERE = os.path.dirname(os.path.abspath(__file__))
TABLES = ["admin_users", "clients", "projects", "tasks", "leads"]


PSQL_SESSIONS = {}
# One psql at a time: a session count read while the sampler's psql was counted but not yet
# connected came out one short (-1 sessions opened).
PSQL_LOCK = threading.Lock()


def psql(db, sql):
    # Counted, so that the benchmark's own sessions are taken out of the daemon's.
    with PSQL_LOCK:
        PSQL_SESSIONS[db] = PSQL_SESSIONS.get(db, 0) + 1
        out = subprocess.run(["psql", "-qtA", "-v", "ON_ERROR_STOP=1", f"{BASE}/{db}", "-c", sql],
                             check=True, capture_output=True, text=True)
    return out.stdout.strip()


def rows_of(path):
    c = sqlite3.connect(path)
    n = sum(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES)
    c.close()
    return n


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def scrape():
    """The daemon's /metrics."""
    return urllib.request.urlopen(f"http://{METRICS}/metrics").read().decode()


def counter(name):
    """A counter of the daemon's, from its /metrics."""
    return next(float(l.split()[1]) for l in scrape().splitlines() if l.startswith(name + " "))


def connections(db):
    # Every backend of the daemon, one still exiting after its connection was let go too.
    return int(psql(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sqlite2pg-fleet' "
                        "AND datname = current_database()"))


def sessions(db):
    # Sessions ever established to the database (PostgreSQL 14 and later), less the
    # benchmark's own psql calls.
    total = int(psql(db, "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"))
    return total - PSQL_SESSIONS[db]


report = []
say = report.append

# The data: one small CRM copied to N tenant files, and one file of the same total rows.
tenants_dir = os.path.join(WORK, "tenants")
os.makedirs(tenants_dir, exist_ok=True)
template = os.path.join(WORK, "template.db")
subprocess.run([sys.executable, os.path.join(HERE, "..", "demo", "gen_crm.py"), template, str(SCALE)], check=True)
per_tenant = rows_of(template)
files = []
for i in range(N):
    f = os.path.join(tenants_dir, f"t{i:04d}.db")
    shutil.copyfile(template, f)
    files.append(f)
big = os.path.join(WORK, "big.db")
subprocess.run([sys.executable, os.path.join(HERE, "..", "demo", "gen_crm.py"), big, str(SCALE * N)], check=True)
big_rows = rows_of(big)
total = per_tenant * N
say(f"{N} tenant files of {per_tenant} rows ({total} rows); one file of {big_rows} rows; pool {POOL}\n")

# 1. The reference: one file, snapshot alone.
psql("postgres", "CREATE DATABASE single")
psql("postgres", "CREATE DATABASE fleet")
t0 = time.time()
subprocess.run([BIN, "--source", big, "--target", f"{BASE}/single", "run", "--snapshot-only"],
               check=True, capture_output=True)
single_secs = time.time() - t0
single_rate = big_rows / single_secs

# 2. The fleet: one daemon, until every tenant is copied and streaming.
cfg = os.path.join(WORK, "fleet.toml")
with open(cfg, "w") as f:
    f.write(f'target = "{BASE}/fleet?application_name=sqlite2pg-fleet"\n\n[fleet]\nfiles = "{tenants_dir}/*.db"\n')
log = open(os.path.join(WORK, "daemon.log"), "w")
t0 = time.time()
import socket
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    METRICS = f"127.0.0.1:{sock.getsockname()[1]}"
daemon = subprocess.Popen([BIN, "--config", cfg, "run", "--max-connections", str(POOL), "--metrics-addr", METRICS],
                          stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
most = 0
while True:
    try:
        ready = int(psql("fleet", "SELECT count(*) FROM sqlite2pg.table_state WHERE phase = 'ready'"))
        streams = int(psql("fleet", "SELECT count(*) FROM sqlite2pg.stream"))
        most = max(most, connections("fleet"))
    except subprocess.CalledProcessError:
        ready = streams = 0
    if ready == N * len(TABLES) and streams == N:
        break
    if daemon.poll() is not None:
        sys.exit("the fleet's daemon exited: see daemon.log")
    time.sleep(0.5)
fleet_secs = time.time() - t0
fleet_rate = total / fleet_secs
say("| measure | target | measured |")
say("| --- | --- | --- |")
say(f"| snapshot of all {N} tenants, rows/s vs one file of the same total | at least 0.8x | "
    f"{fleet_rate:.0f} vs {single_rate:.0f} rows/s: **{fleet_rate / single_rate:.2f}x** "
    f"({fleet_secs:.1f} s vs {single_secs:.1f} s) |")

# The daemon's peak RSS at the end of each phase: where the peak is reached.
peaks = [("snapshot", peak_rss_mb(daemon.pid))]

# 3. Idle: no writes for 30 s.
time.sleep(5)
c0, t0 = proc_cpu(daemon.pid), time.time()
time.sleep(30)
idle = (proc_cpu(daemon.pid) - c0) / (time.time() - t0) * 100
say(f"| idle CPU with no writes (30 s) | under 2% of one core | **{idle:.2f}%** |")
peaks.append(("idle", peak_rss_mb(daemon.pid)))

# 4. Lag across tenants: app writes spread over every tenant at 500 tx/s for 30 s. Postgres
# notes when each row lands (a trigger on every tenant's leads, bench's own, not sqlite2pg's).
psql("fleet", """CREATE TABLE public.bench_arrival (msg text PRIMARY KEY, at double precision NOT NULL);
CREATE FUNCTION public.bench_arrived() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.bench_arrival VALUES (NEW.message, extract(epoch FROM clock_timestamp()))
ON CONFLICT DO NOTHING; RETURN NULL; END $$;
DO $$ DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant_%' LOOP
EXECUTE format('CREATE TRIGGER bench_arrived AFTER INSERT ON %I.leads FOR EACH ROW EXECUTE FUNCTION public.bench_arrived()', s);
END LOOP; END $$;""")


def writer(paths, rate, seconds, sent, failures, stop=None):
    conns = {}
    period = 1.0 / rate
    start = time.time()
    i = 0
    while time.time() - start < seconds and not (stop and stop.is_set()):
        due = start + i * period
        now = time.time()
        if due > now:
            time.sleep(due - now)
        p = paths[(i * 7919) % len(paths)]
        c = conns.get(p)
        if c is None:
            c = conns[p] = sqlite3.connect(p, timeout=5, isolation_level=None)
        msg = uuid.uuid4().hex
        try:
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT INTO leads (name, message, created_at) VALUES ('bench', ?, datetime('now'))", (msg,))
            c.execute("COMMIT")
            sent.append((msg, time.time()))
        except sqlite3.Error as e:
            failures.append(str(e))
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        i += 1


def lags(sent):
    """Each write's lag (ms), waiting up to 60 s for the last ones; and those never seen."""
    deadline = time.time() + 60
    while True:
        got = {}
        for line in psql("fleet", "SELECT msg || ' ' || at FROM public.bench_arrival").splitlines():
            m, a = line.split()
            got[m] = float(a)
        missing = [m for m, _ in sent if m not in got]
        if not missing or time.time() > deadline:
            return [(got[m] - t) * 1000 for m, t in sent if m in got], missing
        time.sleep(1)


sent, failures = [], []
sampler_stop = threading.Event()


def sample():
    global most
    while not sampler_stop.is_set():
        most = max(most, connections("fleet"))
        time.sleep(0.1)


threading.Thread(target=sample, daemon=True).start()
opened = sessions("fleet")
prunes = counter("sqlite2pg_changelog_prunes_total"), time.time()
writer(files, 500, 30, sent, failures)
prunes = counter("sqlite2pg_changelog_prunes_total") - prunes[0], time.time() - prunes[1]
ms, missing = lags(sent)
opened = sessions("fleet") - opened
# Where in time the tail sits: a stall shows as one window, a slow start as the first.
windows = {}
arrived = {m for m, _ in sent} - set(missing)
for (m, t), l in zip([s for s in sent if s[0] in arrived], ms):
    windows.setdefault(int((t - sent[0][1]) // 5), []).append(l)
by_window = ", ".join(f"{pct(w, 0.99):.0f}" for _, w in sorted(windows.items()))
say(f"| lag, app writes over {N} tenants at 500 tx/s (30 s, {len(sent)} tx) | p99 at most 100 ms | "
    f"p50 {pct(ms, 0.5):.0f} ms, **p99 {pct(ms, 0.99):.0f} ms**, max {max(ms):.0f} ms; {len(missing)} not arrived within 60 s; "
    f"{len(failures)} app failures |")
say(f"| the same lag's p99 in each 5 s window | | {by_window} ms |")
say(f"| Postgres sessions opened during those writes | | **{opened}** ({100 * opened / max(len(sent), 1):.1f} per 100 app writes) |")
say(f"| changelog prunes during those writes (on time alone the fleet takes turns, 5 a second at most) | | **{prunes[0]:.0f}** ({prunes[0] / prunes[1]:.1f} a second) |")

peaks.append(("lag", peak_rss_mb(daemon.pid)))

# 5. One tenant applies a 1M-change backlog while the others are written and measured.
heavy = files[0]
c = sqlite3.connect(heavy, timeout=30, isolation_level=None)
c.execute("""INSERT INTO tasks (project_id, title, status, created_at)
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
SELECT 1, 'backlog ' || i, 'pending', datetime('now') FROM n""", (BACKLOG,))
c.close()
backlog_start = time.time()
sent2, failures2 = [], []
writer(files[1:], 100, 30, sent2, failures2)
ms2, missing2 = lags(sent2)
heavy_seq = int(sqlite3.connect(heavy).execute("SELECT coalesce(max(seq), 0) FROM _sqlite2pg_changes").fetchone()[0])
while int(psql("fleet", "SELECT position FROM sqlite2pg.stream WHERE tenant = 't0000'")) < heavy_seq:
    time.sleep(1)
backlog_secs = time.time() - backlog_start
say(f"| the others' lag while one tenant applies a {BACKLOG}-change backlog (100 tx/s over the others, 30 s) | "
    f"p99 at most 250 ms | p50 {pct(ms2, 0.5):.0f} ms, **p99 {pct(ms2, 0.99):.0f} ms**, max {max(ms2):.0f} ms; "
    f"{len(missing2)} not arrived within 60 s (the backlog applied in {backlog_secs:.0f} s) |")

peaks.append(("backlog", peak_rss_mb(daemon.pid)))

# 6. 100 tenants cut over one after another while their apps write.
hundred = files[1:101]
cfg100 = os.path.join(WORK, "fleet100.toml")
with open(cfg100, "w") as f:
    f.write(f'target = "{BASE}/fleet"\n\n[fleet]\nfiles = {json.dumps(hundred)}\n')
sent3, failures3 = [], []
stop = threading.Event()
w = threading.Thread(target=writer, args=(hundred, 100, 600, sent3, failures3, stop))
w.start()
time.sleep(2)
t0 = time.time()
out = subprocess.run([BIN, "--config", cfg100, "cutover", "--pace", "0"], capture_output=True, text=True)
cut_secs = time.time() - t0
stop.set()
w.join()
if out.returncode != 0:
    sys.exit(f"the fleet cutover failed:\n{out.stdout}\n{out.stderr}")
windows = [float(x) for x in psql("fleet", "SELECT window_ms FROM sqlite2pg.cutover").splitlines()]
fenced = [f for f in failures3 if "moved to PostgreSQL" in f]
other = [f for f in failures3 if "moved to PostgreSQL" not in f]
say(f"| {len(windows)} tenants cut over one after another ({cut_secs:.0f} s), apps writing 100 tx/s | "
    f"median window at most 50 ms; 0 app write failures before any fence | median **{statistics.median(windows):.0f} ms**, "
    f"p90 {pct(windows, 0.9):.0f} ms, max {max(windows):.0f} ms; **{len(other)}** failures other than the fence "
    f"({len(fenced)} writes refused by a fence, as meant) |")

peaks.append(("cutovers", peak_rss_mb(daemon.pid)))
say(f"| daemon peak RSS | at most 250 MB | **{peak_rss_mb(daemon.pid):.0f} MB** |")
say("| the same peak at the end of each phase | | " + ", ".join(f"{p} {m:.0f}" for p, m in peaks) + " MB |")
sampler_stop.set()
say(f"| Postgres connections (sampled every 0.1 s) | at most the pool ({POOL}) | **{most}** |")
lines = [l for l in scrape().splitlines() if l and not l.startswith("#")]
per_tenant = [l for l in lines if l.startswith("sqlite2pg_tenant_")]
say(f"| Prometheus series at {N} tenants | usable | **{len(lines)}** series, {len(per_tenant)} of them per tenant |")
daemon.terminate()
daemon.wait(timeout=60)
print("\n".join(report))
