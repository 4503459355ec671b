"""Stream benchmark phases, driven against a running `sqlite2pg run` daemon.
usage: stream_phases.py SQLITE PG_URL DAEMON_PID SQLITE2PG_BIN   (prints one JSON object)"""
import json, os, random, signal, sqlite3, subprocess, sys, threading, time

import psycopg

db_path, pg_url, daemon_pid, binary = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
JULIAN_UNIX = 2440587.5
pg = psycopg.connect(pg_url, autocommit=True)


def position():
    return pg.execute("SELECT position FROM sqlite2pg.stream").fetchone()[0]


def newest(conn):
    return conn.execute("SELECT coalesce(max(seq), 0) FROM _sqlite2pg_changes").fetchone()[0]


def wait_caught_up(conn, timeout=600):
    target = newest(conn)
    deadline = time.monotonic() + timeout
    while position() < target:
        if time.monotonic() > deadline:
            raise SystemExit("the daemon did not catch up")
        time.sleep(0.005)


def connect():
    c = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    return c


result = {}
app = connect()
task_ids = [r[0] for r in app.execute("SELECT id FROM tasks")]
rnd = random.Random(1)

# A. Apply throughput: 500k single-row updates, as fast as the writer goes; time until
#    Postgres has all of them.
wait_caught_up(app)
ids = rnd.sample(task_ids, 500_000)
t0 = time.monotonic()
for i in range(0, len(ids), 1000):
    app.execute("BEGIN")
    app.executemany("UPDATE tasks SET priority = priority + 1 WHERE id = ?", ((x,) for x in ids[i:i + 1000]))
    app.execute("COMMIT")
t_written = time.monotonic() - t0
wait_caught_up(app)
t_total = time.monotonic() - t0
result["apply"] = {"changes": len(ids), "write_secs": round(t_written, 2), "until_applied_secs": round(t_total, 2),
                   "changes_per_sec": round(len(ids) / t_total)}

# A2. Apply ceiling and memory under a backlog: 1M updates (two passes over 500k tasks)
#     written while the daemon is paused (SIGSTOP), then the time it takes to catch up once
#     resumed (one Postgres transaction: every commit is one SQLite state), and the daemon's
#     peak RSS so far.
def stop_daemon_outside_a_write():
    """SIGSTOP the daemon, but never inside one of its short prune transactions: stopped
    there it would hold SQLite's write lock, and the app's writes would time out (it happened
    once in three runs). The app's BEGIN IMMEDIATE tells: if it cannot get the lock at once,
    let the daemon finish its slice and stop it again."""
    probe = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    while True:
        os.kill(daemon_pid, signal.SIGSTOP)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            probe.close()
            return
        except sqlite3.OperationalError:
            os.kill(daemon_pid, signal.SIGCONT)
            time.sleep(0.05)


stop_daemon_outside_a_write()
ids = rnd.sample(task_ids, 500_000) + rnd.sample(task_ids, 500_000)
for i in range(0, len(ids), 1000):
    app.execute("BEGIN")
    app.executemany("UPDATE tasks SET priority = priority + 1 WHERE id = ?", ((x,) for x in ids[i:i + 1000]))
    app.execute("COMMIT")
t0 = time.monotonic()
os.kill(daemon_pid, signal.SIGCONT)
wait_caught_up(app)
t_catch = time.monotonic() - t0
hwm_kb = next(int(l.split()[1]) for l in open(f"/proc/{daemon_pid}/status") if l.startswith("VmHWM:"))
result["apply_catch_up"] = {"changes": len(ids), "secs": round(t_catch, 2), "changes_per_sec": round(len(ids) / t_catch),
                            "daemon_peak_rss_mb_so_far": round(hwm_kb / 1024)}

# B. Lag under load: 500 single-row transactions/s for 60 s; lag sampled every 50 ms as the
#    age of the oldest change Postgres does not have yet (0 when caught up).
samples, stop = [], threading.Event()


def sample():
    s = connect()
    while not stop.is_set():
        pos = position()
        row = s.execute("SELECT min(at) FROM _sqlite2pg_changes WHERE seq > ?", (pos,)).fetchone()
        now = time.time()
        samples.append(0.0 if row[0] is None else max(0.0, now - (row[0] - JULIAN_UNIX) * 86400))
        time.sleep(0.05)


sampler = threading.Thread(target=sample)
sampler.start()
rate, seconds, n, lat = 500, 60, 0, []
t0 = time.monotonic()
while time.monotonic() - t0 < seconds:
    due = t0 + n / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    n += 1
    a = time.monotonic()
    app.execute("BEGIN")
    if n % 5 == 0:
        app.execute("INSERT INTO leads (name, contact, source, status, created_at) VALUES (?, ?, 'bot', 'new', datetime('now'))", (f"bench {n}", f"@b{n}"))
    else:
        app.execute("UPDATE tasks SET status = ?, updated_at = datetime('now') WHERE id = ?", (rnd.choice(["done", "pending"]), rnd.choice(task_ids)))
    app.execute("COMMIT")
    lat.append((time.monotonic() - a) * 1000)
achieved = n / (time.monotonic() - t0)
wait_caught_up(app)
stop.set()
sampler.join()
samples.sort()
lat.sort()
q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))]
result["lag"] = {"tx_per_sec": round(achieved), "samples": len(samples), "p50_ms": round(q(samples, 0.5) * 1000, 1),
                 "p99_ms": round(q(samples, 0.99) * 1000, 1), "max_ms": round(samples[-1] * 1000, 1),
                 "app_write_p99_ms": round(q(lat, 0.99), 2)}


# C. Capture overhead: the same app workloads (best of 3 each) with capture and the daemon
#    running, with capture but no daemon, and without capture (triggers uninstalled).
def workloads():
    c = connect()
    best_single, best_bulk = 0.0, float("inf")
    for _ in range(3):
        ids = rnd.sample(task_ids, 10_000)
        t = time.monotonic()
        for x in ids:
            c.execute("BEGIN")
            c.execute("UPDATE tasks SET estimated_hours = estimated_hours + 1 WHERE id = ?", (x,))
            c.execute("COMMIT")
        best_single = max(best_single, len(ids) / (time.monotonic() - t))
        lo = rnd.randint(1, len(task_ids) - 10_000)
        t = time.monotonic()
        c.execute("BEGIN")
        c.execute("UPDATE tasks SET priority = priority + 1 WHERE id >= ? AND id < ?", (lo, lo + 10_000))
        c.execute("COMMIT")
        best_bulk = min(best_bulk, time.monotonic() - t)
    return best_single, best_bulk


daemon_single, daemon_bulk = workloads()
wait_caught_up(app)
os.kill(daemon_pid, signal.SIGTERM)
while True:
    try:
        os.kill(daemon_pid, 0)
        time.sleep(0.05)
    except ProcessLookupError:
        break
with_single, with_bulk = workloads()
subprocess.run([binary, "--source", db_path, "uninstall"], check=True, stdout=subprocess.DEVNULL)
without_single, without_bulk = workloads()
result["capture"] = {
    "single_row_tx_per_sec": {"capture_and_daemon": round(daemon_single), "capture": round(with_single), "none": round(without_single)},
    "single_row_ratio": {"capture_and_daemon": round(daemon_single / without_single, 3), "capture": round(with_single / without_single, 3)},
    "update_10k_secs": {"capture_and_daemon": round(daemon_bulk, 4), "capture": round(with_bulk, 4), "none": round(without_bulk, 4)},
    "update_10k_rate_ratio": {"capture_and_daemon": round(without_bulk / daemon_bulk, 3), "capture": round(without_bulk / with_bulk, 3)},
}
print(json.dumps(result))
