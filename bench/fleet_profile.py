"""Where a fleet daemon's session hand-off spends the server's time, driven by
bench/fleet-profile: TENANTS small files followed by one daemon (pool 10), RATE writes a
second for 20 s, each to a random tenant (so nearly each one is a hand-off), then the
statements pg_stat_statements saw, with their planning time. Prints a Markdown report.

usage: fleet_profile.py BIN URL WORKDIR [TENANTS] [RATE]
"""
import os, random, sqlite3, subprocess, sys, time

BIN, URL, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
N = int(sys.argv[4]) if len(sys.argv) > 4 else 200
RATE = int(sys.argv[5]) if len(sys.argv) > 5 else 300
SECONDS = 20
BASE = URL.rsplit("/", 1)[0]


def psql(db, sql):
    out = subprocess.run(["psql", "-qtA", "-v", "ON_ERROR_STOP=1", f"{BASE}/{db}", "-c", sql],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise subprocess.CalledProcessError(out.returncode, sql, out.stdout, out.stderr)
    return out.stdout.strip()


psql("postgres", "CREATE DATABASE prof")
psql("prof", "CREATE EXTENSION pg_stat_statements")
tenants = os.path.join(WORK, "tenants")
os.makedirs(tenants)
files = []
for i in range(N):
    path = os.path.join(tenants, f"t{i:04d}.db")
    c = sqlite3.connect(path)
    c.executescript("""PRAGMA journal_mode = wal;
CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
CREATE TABLE leads (id INTEGER PRIMARY KEY, client_id INTEGER REFERENCES clients(id), source TEXT,
                    score INTEGER, created_at TEXT);
INSERT INTO clients (name, email) VALUES ('a', 'a@example.com'), ('b', 'b@example.com');""")
    c.close()
    files.append(path)
cfg = os.path.join(WORK, "fleet.toml")
with open(cfg, "w") as f:
    f.write(f'target = "{BASE}/prof"\n\n[fleet]\nfiles = "{tenants}/*.db"\n')
log = open(os.path.join(WORK, "daemon.log"), "w")
daemon = subprocess.Popen([BIN, "--config", cfg, "run", "--max-connections", "10"],
                          stdout=log, stderr=log)


def streaming():
    # Before the daemon made its state, there is no sqlite2pg.stream to count.
    try:
        return int(psql("prof", "SELECT count(*) FROM sqlite2pg.stream"))
    except subprocess.CalledProcessError:
        return 0


try:
    deadline = time.time() + 300
    while streaming() < N:
        if time.time() > deadline or daemon.poll() is not None:
            sys.exit("the daemon did not start every tenant (its log: daemon.log)")
        time.sleep(1)
    time.sleep(3)
    psql("prof", "SELECT pg_stat_statements_reset()")
    conns, n, t0 = {}, 0, time.time()
    while time.time() - t0 < SECONDS:
        path = random.choice(files)
        c = conns.setdefault(path, sqlite3.connect(path, timeout=30, isolation_level=None))
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO leads (client_id, source, score, created_at) VALUES (1, 'web', 5, datetime('now'))")
        c.execute("COMMIT")
        n += 1
        time.sleep(max(0.0, t0 + n / RATE - time.time()))
    time.sleep(10)
    execute, plan, calls = psql("prof", "SELECT round(sum(total_exec_time)), round(sum(total_plan_time)), "
                                        "sum(calls) FROM pg_stat_statements").split("|")
    print(f"{n} writes over {N} tenants in {SECONDS} s: {calls} statements ({int(calls) / n:.1f} a write), "
          f"{execute} ms executing and {plan} ms planning in all\n")
    print("| ms (execute + plan) | of which planning | calls | ms a call | statement |")
    print("| --- | --- | --- | --- | --- |")
    rows = psql("prof", """SELECT round(total_exec_time + total_plan_time), round(total_plan_time), calls,
           round(((total_exec_time + total_plan_time) / nullif(calls, 0))::numeric, 3), left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
      FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT 15""")
    for line in rows.splitlines():
        cells = line.split("|", 4)
        print("| " + " | ".join(cells[:4]) + " | `" + cells[4].replace("|", "/") + "` |")
finally:
    daemon.terminate()
    daemon.wait(timeout=60)
