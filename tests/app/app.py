"""The test app. Usage:
  app.py seed SQLITE_PATH N [wal|delete]  create the schema on SQLite and write N projects through the ORM
  app.py write SQLITE_PATH SECONDS RATE   the bot at work: RATE ORM transactions/s for SECONDS, then
                                   a JSON line {"transactions", "failed", "p50_ms", "p99_ms"}
  app.py write-switch URL_FILE SECONDS RATE  the same, on the database whose URL the file holds
                                   (read again before every transaction)
  app.py alembic PG_URL            autogenerate the initial migration from the models and upgrade
  app.py compare SQLITE_PATH PG_URL  read every row of both through SQLAlchemy and compare
  app.py migrate SQLITE_PATH REV TABLE  upgrade to REV with the app's own (batch-mode) migrations
                                   in migrations/, then at once, on the same connection, insert,
                                   update and delete a row of TABLE
"""
import random
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

import models
from models import Counter, Membership, Project, ProjectStatus, Task, User

HERE = Path(__file__).resolve().parent


def pg_engine(url):
    return create_engine(url.replace("postgres://", "postgresql+psycopg://", 1))


def seed(path, n, journal="wal"):
    rnd = random.Random(7)
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as c:
        c.exec_driver_sql(f"PRAGMA journal_mode = {journal}")
    models.Base.metadata.create_all(engine)
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    with Session(engine) as s:
        users = [User(telegram_id=10**9 + i, name=f"user {i} ✓", is_admin=i == 0, created_at=t0 + timedelta(seconds=i * 3.25)) for i in range(10)]
        s.add_all(users)
        s.flush()
        for p in range(n):
            proj = Project(owner_id=rnd.choice(users).id, title=f"project {p} 'quoted'", status=rnd.choice(list(ProjectStatus)),
                           budget=Decimal(rnd.randint(0, 10**8)) / 100 if p % 3 else None, meta={"tags": ["бот", p], "n": p} if p % 2 else None)
            s.add(proj)
            s.flush()
            # A subtask written before its parent: its parent gets the higher id.
            child = Task(project_id=proj.id, title="child", due=datetime(2024, 5, 1, 12, 0, 0, 123456))
            s.add(child)
            s.flush()
            parent = Task(project_id=proj.id, title="parent", notes="line1\nline2", done=True)
            s.add(parent)
            s.flush()
            child.parent_id = parent.id
            s.add(Membership(user_id=users[p % 10].id, project_id=proj.id, role="owner"))
        s.add_all([Counter(id=i, hits=0) for i in range(1, 11)])
        s.commit()


def engine_for(url):
    if url.startswith("sqlite:"):
        return create_engine(url, connect_args={"timeout": 5})
    return pg_engine(url)


def write(path, seconds, rate, url_file=None):
    """Random ORM transactions at a steady rate; every failure is counted, none retried.
    With url_file, each transaction reads the database URL from that file (the app pointed
    elsewhere by a cutover's or a fallback's --exec)."""
    import json
    import time

    rnd = random.Random()
    engines = {}

    def current():
        url = Path(url_file).read_text().strip() if url_file else f"sqlite:///{path}"
        if url not in engines:
            engines[url] = engine_for(url)
        return engines[url]

    latencies, failed, first_failure, samples, failure_times = [], 0, None, [], []
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        due = start + n / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        n += 1
        t0 = time.monotonic()
        engine = current()
        try:
            with Session(engine) as s, s.begin():
                op = rnd.random()
                if op < 0.3:
                    proj = Project(owner_id=rnd.randint(1, 10), title=f"live {n}", status=rnd.choice(list(ProjectStatus)),
                                   budget=Decimal(rnd.randint(0, 10**7)) / 100, meta={"n": n})
                    s.add(proj)
                    s.flush()
                    parent = Task(project_id=proj.id, title="parent")
                    s.add(parent)
                    s.flush()
                    s.add(Task(project_id=proj.id, parent_id=parent.id, title="subtask", due=datetime(2025, 1, 1, 9, 30)))
                elif op < 0.6:
                    task = s.execute(select(Task).order_by(Task.id.desc()).limit(1).offset(rnd.randint(0, 50))).scalar()
                    if task is not None:
                        task.done = not task.done
                        task.title = f"edited {n}"
                elif op < 0.85:
                    counter = s.get(Counter, rnd.randint(1, 10))
                    counter.hits = Counter.hits + 1
                elif op < 0.95:
                    proj = s.execute(select(Project).order_by(Project.id).limit(1).offset(rnd.randint(0, 20))).scalar()
                    if proj is not None:
                        s.execute(Membership.__table__.delete().where(Membership.project_id == proj.id))
                        s.execute(Task.__table__.update().where(Task.project_id == proj.id).values(parent_id=None))
                        if engine.dialect.name == "postgresql":
                            # Postgres cascades to the tasks itself (ON DELETE CASCADE).
                            s.execute(Project.__table__.delete().where(Project.id == proj.id))
                        else:
                            s.delete(proj)  # ORM cascade deletes its tasks
                else:
                    uid, pid = rnd.randint(1, 10), rnd.randint(1, 50)
                    if s.get(Membership, (uid, pid)) is None and s.get(Project, pid) is not None:
                        s.add(Membership(user_id=uid, project_id=pid, role="member"))
        except Exception as e:  # noqa: BLE001 - every failure counts
            failed += 1
            if first_failure is None:
                first_failure = time.time()
            failure_times.append(time.time())
            if len(samples) < 3:
                samples.append(str(e).splitlines()[0])
            print(f"transaction {n} failed: {e}", file=sys.stderr)
        latencies.append((time.monotonic() - t0) * 1000)
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else 0
    print(json.dumps({"transactions": n, "failed": failed, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": pick(1.0),
                      "first_failure_unix": first_failure, "failure_samples": samples,
                      "failure_times": failure_times}))


def pg_insert(url):
    """The app on Postgres after cutover: new rows without ids, through the ORM."""
    with Session(pg_engine(url)) as s, s.begin():
        proj = Project(owner_id=1, title="after cutover", status=ProjectStatus.new, budget=Decimal("1.50"), meta={"on": "postgres"})
        s.add(proj)
        s.flush()
        task = Task(project_id=proj.id, title="first task on postgres")
        s.add(task)
        s.flush()
        counter = s.get(Counter, 1)
        counter.hits = Counter.hits + 1
        print(f"project {proj.id} task {task.id}")


def alembic_upgrade(url):
    from alembic import command
    from alembic.config import Config

    with tempfile.TemporaryDirectory() as versions:
        cfg = Config()
        cfg.set_main_option("script_location", str(HERE / "alembic"))
        cfg.set_main_option("version_locations", versions)
        cfg.set_main_option("sqlalchemy.url", url.replace("postgres://", "postgresql+psycopg://", 1).replace("%", "%%"))
        command.revision(cfg, autogenerate=True, message="initial", rev_id="0001")
        command.upgrade(cfg, "head")


def migrate(path, rev, table):
    """What a deploy does: the app's migrations on the live file, and the app writing straight
    after their commit, before anything else can get in."""
    from alembic import command
    from alembic.config import Config

    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 10})
    with engine.connect() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(HERE / "migrations"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, rev)
        conn.commit()
        q = '"' + table.replace('"', '""') + '"'
        top = conn.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {q}").scalar()
        conn.exec_driver_sql(f"INSERT INTO {q} (id, name, qty) VALUES (?, ?, ?)", (top + 1, f"after {rev} " + ("x" * 25 if rev >= "0002" else ""), 99))
        conn.exec_driver_sql(f"UPDATE {q} SET qty = qty + 1000 WHERE id = (SELECT min(id) FROM {q})")
        conn.exec_driver_sql(f"DELETE FROM {q} WHERE id = (SELECT min(id) FROM {q} WHERE id > 1)")
        # Duplicates stay duplicated in a table without a key; one copy of a pair leaves.
        conn.exec_driver_sql("INSERT INTO tags VALUES (7, ?), (7, ?)", (f"dup {rev}", f"dup {rev}"))
        conn.exec_driver_sql("DELETE FROM tags WHERE rowid = (SELECT min(rowid) FROM tags WHERE tag = 't1')")
        conn.commit()


def normalise(value):
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def compare(path, url):
    a = create_engine(f"sqlite:///{path}")
    b = pg_engine(url)
    problems = 0
    with Session(a) as sa, Session(b) as sb:
        for model in (User, Project, Task, Membership, Counter):
            cols = [c.key for c in model.__table__.columns]
            key = [c.key for c in model.__table__.primary_key.columns]
            order = [getattr(model, k) for k in key]
            rows_a = sa.execute(select(model).order_by(*order)).scalars().all()
            rows_b = sb.execute(select(model).order_by(*order)).scalars().all()
            if len(rows_a) != len(rows_b):
                print(f"{model.__tablename__}: {len(rows_a)} rows in SQLite, {len(rows_b)} in Postgres")
                problems += 1
            for ra, rb in zip(rows_a, rows_b):
                for c in cols:
                    va, vb = normalise(getattr(ra, c)), normalise(getattr(rb, c))
                    if va != vb:
                        print(f"{model.__tablename__} {[getattr(ra, k) for k in key]} {c}: {va!r} != {vb!r}")
                        problems += 1
            print(f"{model.__tablename__}: {len(rows_a)} rows compared")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "seed":
        seed(sys.argv[2], int(sys.argv[3]), *(sys.argv[4:5]))
    elif cmd == "write":
        write(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    elif cmd == "write-switch":
        write(None, float(sys.argv[3]), float(sys.argv[4]), url_file=sys.argv[2])
    elif cmd == "alembic":
        alembic_upgrade(sys.argv[2])
    elif cmd == "pg-insert":
        pg_insert(sys.argv[2])
    elif cmd == "migrate":
        migrate(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
