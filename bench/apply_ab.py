"""N single-row updates of tasks in 1000-row transactions, timed until Postgres has them all.
usage: apply_ab.py SQLITE PG_URL N"""
import random, sqlite3, sys, time

import psycopg

db, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
pg = psycopg.connect(url, autocommit=True)
app = sqlite3.connect(db, timeout=30, isolation_level=None)
task_ids = [r[0] for r in app.execute("SELECT id FROM tasks")]
ids = random.Random(1).sample(task_ids, n)
t0 = time.monotonic()
for i in range(0, len(ids), 1000):
    app.execute("BEGIN")
    app.executemany("UPDATE tasks SET priority = priority + 1 WHERE id = ?", ((x,) for x in ids[i:i + 1000]))
    app.execute("COMMIT")
written = time.monotonic() - t0
target = app.execute("SELECT max(seq) FROM _sqlite2pg_changes").fetchone()[0]
while pg.execute("SELECT position FROM sqlite2pg.stream").fetchone()[0] < target:
    time.sleep(0.005)
total = time.monotonic() - t0
print(f"write {written:.2f}s applied {total:.2f}s -> {n / total:.0f} changes/s")
