"""The demo's Telegram bot: CRM transactions through SQLAlchemy at a steady rate, on whatever
database URL the file URL_FILE names at the moment. Usage:

  bot.py URL_FILE RATE SUMMARY_JSON

It runs until SIGTERM, then writes a JSON summary. Like a real bot behind a config reload, it
reads URL_FILE before each transaction; cutover's --exec hook rewrites it with the Postgres URL.
A write refused by a fence (the cutover's "this database has moved to PostgreSQL", or the
fallback's "moved back to SQLite") is retried, with
the URL read again, until it lands: the user never sees it fail. Any other error counts as a
failed transaction. SQLite connections turn foreign keys on, so deleting a project cascades to
its tasks on both databases.
"""
import json
import random
import signal
import sys
import time

from sqlalchemy import create_engine, event, text

# The cutover's fence on SQLite, and the fallback's on Postgres.
FENCES = ("moved to PostgreSQL", "moved back to SQLite")

url_file, rate, summary_path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
engines = {}


def engine_for(url):
    if url not in engines:
        if url.startswith("sqlite"):
            e = create_engine(url, connect_args={"timeout": 5})

            @event.listens_for(e, "connect")
            def _fk_on(dbapi_conn, _record):
                dbapi_conn.execute("PRAGMA foreign_keys = ON")

        else:
            e = create_engine(url.replace("postgres://", "postgresql+psycopg://", 1))
        engines[url] = e
    return engines[url]


def current_url():
    with open(url_file) as f:
        return f.read().strip()


rnd = random.Random()


def one_transaction(conn, n):
    op = rnd.random()
    if op < 0.25:
        conn.execute(
            text("INSERT INTO leads (telegram_user_id, name, contact, message, source, status, extra, created_at) "
                 "VALUES (:tg, :name, :contact, :msg, 'bot', 'new', :extra, CURRENT_TIMESTAMP)"),
            {"tg": rnd.randint(10**8, 10**10), "name": f"Лид из бота {n}", "contact": f"@live{n}",
             "msg": "хочу бота для магазина", "extra": json.dumps({"n": n})},
        )
    elif op < 0.45:
        conn.execute(
            text("UPDATE clients SET notes = :notes, updated_at = CURRENT_TIMESTAMP WHERE id = :id"),
            {"notes": f"звонок {n}", "id": rnd.randint(1, max_id(conn, "clients"))},
        )
    elif op < 0.65:
        pid = conn.execute(
            text("INSERT INTO projects (client_id, title, description, budget, status, created_at) "
                 "VALUES (:client, :title, 'из бота', :budget, 'new', CURRENT_TIMESTAMP) RETURNING id"),
            {"client": rnd.randint(1, max_id(conn, "clients")), "title": f"проект {n}",
             "budget": f"{rnd.randint(1000, 900000)}.50"},
        ).scalar_one()
        for i in range(2):
            conn.execute(
                text("INSERT INTO tasks (project_id, executor_id, title, status, priority, created_at) "
                     "VALUES (:p, :e, :t, 'pending', :prio, CURRENT_TIMESTAMP)"),
                {"p": pid, "e": rnd.randint(1, 50), "t": f"задача {i} проекта {n}", "prio": rnd.randint(1, 5)},
            )
    elif op < 0.92:
        conn.execute(
            text("UPDATE tasks SET is_done = NOT is_done, status = 'done', updated_at = CURRENT_TIMESTAMP "
                 "WHERE id = :id"),
            {"id": rnd.randint(1, max_id(conn, "tasks"))},
        )
    else:
        # A project and (cascade) its tasks go.
        conn.execute(text("DELETE FROM projects WHERE id = :id"),
                     {"id": rnd.randint(1, max_id(conn, "projects"))})


def max_id(conn, table):
    # Table names here are this script's own constants, never input.
    return conn.execute(text(f"SELECT coalesce(max(id), 1) FROM {table}")).scalar_one()


stopping = False


def stop(_sig, _frame):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)

done = {"sqlite": 0, "postgres": 0}
failed, retried, samples, latencies, longest_wait = 0, 0, [], [], 0.0
switched_at = None
start = time.monotonic()
n = 0
while not stopping:
    due = start + n / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    n += 1
    t0 = time.monotonic()
    while True:
        url = current_url()
        kind = "sqlite" if url.startswith("sqlite") else "postgres"
        try:
            with engine_for(url).begin() as conn:
                one_transaction(conn, n)
            done[kind] += 1
            if kind == "postgres" and switched_at is None:
                switched_at = time.time()
            break
        except Exception as e:  # noqa: BLE001 - every failure is counted
            if any(f in str(e) for f in FENCES) and time.monotonic() - t0 < 30:
                retried += 1
                time.sleep(0.002)
                continue
            failed += 1
            if len(samples) < 3:
                samples.append(str(e).splitlines()[0])
            break
    took = time.monotonic() - t0
    latencies.append(took * 1000)
    longest_wait = max(longest_wait, took)

latencies.sort()


def pick(q):
    return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else 0


with open(summary_path, "w") as f:
    json.dump({"transactions": done["sqlite"] + done["postgres"] + failed, "on_sqlite": done["sqlite"],
               "on_postgres": done["postgres"], "failed": failed, "fence_retries": retried,
               "p50_ms": pick(0.5), "p99_ms": pick(0.99), "longest_ms": round(longest_wait * 1000, 1),
               "failure_samples": samples}, f)
