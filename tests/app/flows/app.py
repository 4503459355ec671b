"""The flows app (SQLAlchemy + Alembic, shaped like a workflow orchestrator's server database):
SQLAlchemy's portable types (Uuid, Interval, JSON under a unique index, an Enum that is
native on Postgres only, aware datetimes), and one Alembic version tree per database, so the
two sides' revision ids differ. Its transactions read, then write, inside one deferred
`BEGIN` (SQLAlchemy's documented pysqlite recipe; Django's `atomic()` does the same).
DB is `sqlite:PATH` or a postgres URL. Usage:
  app.py upgrade DB          the app's migrations for that database (its own tree)
  app.py heads DB            the revision the database is at, as JSON
  app.py seed DB N           5 flows, N runs and some automation buckets
  app.py write DB SECONDS    the app at work, then {"transactions", "failed", "locked", "errors"}
  app.py answers DB          a JSON object of ORM answers
"""
import datetime as dt
import enum
import json
import random
import sys
import time
from collections import Counter
import uuid
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, DateTime, Enum, ForeignKey, Integer, Interval, String, TypeDecorator, Uuid, create_engine, event, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

HERE = Path(__file__).resolve().parent
UTC = dt.timezone.utc


class StateType(enum.Enum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Timestamp(TypeDecorator):
    """Aware UTC datetimes on both databases (SQLite keeps them naive, in UTC), as the
    orchestrator's own column type does."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class Flow(Base):
    __tablename__ = "flow"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String, unique=True)
    created: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=func.current_timestamp())


class FlowRun(Base):
    __tablename__ = "flow_run"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    flow_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("flow.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String)
    state_type: Mapped[StateType | None] = mapped_column(Enum(StateType, name="state_type", create_constraint=True))
    total_run_time: Mapped[dt.timedelta] = mapped_column(Interval, default=dt.timedelta(0))
    start_time: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    parameters: Mapped[dict] = mapped_column(Json, default=dict)
    tags: Mapped[list] = mapped_column(Json, default=list)


class AutomationBucket(Base):
    __tablename__ = "automation_bucket"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    automation_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    trigger_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    bucketing_key: Mapped[dict] = mapped_column(Json)
    count: Mapped[int] = mapped_column(Integer, default=0)


def url(db):
    if db.startswith("sqlite:"):
        return "sqlite:///" + db[len("sqlite:"):]
    return db.replace("postgres://", "postgresql+psycopg://", 1)


def engine(db):
    if not db.startswith("sqlite:"):
        return create_engine(url(db))
    e = create_engine(url(db), connect_args={"timeout": 30})

    # SQLAlchemy's recipe for real transactions on pysqlite: the driver's own BEGIN comes
    # only before a write, so a read-then-write would be two transactions.
    @event.listens_for(e, "connect")
    def no_driver_transactions(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(e, "begin")
    def deferred_begin(conn):
        conn.exec_driver_sql("BEGIN")

    return e


def alembic_config(db):
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "alembic"))
    tree = "sqlite" if db.startswith("sqlite:") else "postgresql"
    cfg.set_main_option("version_locations", str(HERE / "alembic" / "versions" / tree))
    cfg.set_main_option("sqlalchemy.url", url(db))
    return cfg


def heads(db):
    with engine(db).connect() as c:
        return [r[0] for r in c.execute(text("SELECT version_num FROM alembic_version"))]


def random_run(rnd, flow_ids, n):
    return FlowRun(
        flow_id=rnd.choice(flow_ids),
        name=f"run-{n}",
        state_type=rnd.choice([None, *StateType]),
        total_run_time=dt.timedelta(seconds=rnd.randrange(0, 4000), microseconds=rnd.randrange(10**6)) * rnd.choice([1, 1, 1, -1]),
        start_time=None if n % 7 == 0 else dt.datetime(2024, 3, 30, 23, 30, tzinfo=UTC) + dt.timedelta(minutes=rnd.randrange(10**5)),
        parameters={"env": rnd.choice(["prod", "dev"]), "retries": rnd.randrange(4), "nested": {"k": [n, "x"]}},
        tags=rnd.sample(["etl", "nightly", "ml", "adhoc"], rnd.randrange(3)),
    )


def seed(db, n):
    rnd = random.Random(7)
    with Session(engine(db)) as s, s.begin():
        flows = [Flow(id=uuid.UUID(int=rnd.getrandbits(128)), name=f"flow-{i}") for i in range(5)]
        s.add_all(flows)
        s.flush()
        ids = [f.id for f in flows]
        for i in range(n):
            r = random_run(rnd, ids, i)
            r.id = uuid.UUID(int=rnd.getrandbits(128))
            s.add(r)
        for i in range(30):
            s.add(AutomationBucket(id=uuid.UUID(int=rnd.getrandbits(128)), automation_id=uuid.UUID(int=i % 3 + 1), trigger_id=uuid.UUID(int=7),
                                   bucketing_key={"flow": f"flow-{i % 5}", "n": i}, count=i))


def write(db, seconds):
    rnd = random.Random()
    done = failed = locked = 0
    errors = []
    end = time.time() + seconds
    n = 0
    with Session(engine(db)) as s:
        while time.time() < end:
            n += 1
            try:
                with s.begin():
                    k = rnd.randrange(4)
                    if k == 0:
                        ids = s.scalars(select(Flow.id)).all()
                        s.add(random_run(rnd, ids, 10**6 + n))
                    elif k == 1:
                        r = s.scalars(select(FlowRun).order_by(func.random()).limit(1)).first()
                        if r:
                            r.state_type = rnd.choice(list(StateType))
                            r.total_run_time = r.total_run_time + dt.timedelta(seconds=rnd.randrange(60))
                            r.parameters = {**r.parameters, "retries": r.parameters.get("retries", 0) + 1}
                    elif k == 2:
                        key = {"flow": f"flow-{rnd.randrange(5)}", "n": rnd.randrange(40)}
                        b = s.scalars(select(AutomationBucket).where(AutomationBucket.automation_id == uuid.UUID(int=1),
                                                                     AutomationBucket.trigger_id == uuid.UUID(int=7),
                                                                     AutomationBucket.bucketing_key == key)).first()
                        if b:
                            b.count += 1
                        else:
                            s.add(AutomationBucket(automation_id=uuid.UUID(int=1), trigger_id=uuid.UUID(int=7), bucketing_key=key, count=1))
                    else:
                        r = s.scalars(select(FlowRun).where(FlowRun.state_type == StateType.CANCELLED).order_by(func.random()).limit(1)).first()
                        if r:
                            s.delete(r)
                done += 1
            except Exception as e:  # noqa: BLE001 - counted and reported
                failed += 1
                locked += "database is locked" in str(e)
                errors.append(f"{type(e).__name__}: {e}"[:300])
            time.sleep(0.005)
    print(json.dumps({"transactions": done, "failed": failed, "locked": locked, "errors": errors[:5]}))


def answers(db):
    with Session(engine(db)) as s:
        def one(q):
            return s.execute(q).scalar()
        runs = s.scalars(select(FlowRun).order_by(FlowRun.id)).all()
        first = runs[0].id if runs else None
        return {
            "flows": [[str(f.id), f.name, f.created.tzinfo is not None] for f in s.scalars(select(Flow).order_by(Flow.name))],
            "runs": [[str(r.id), str(r.flow_id), r.name, r.state_type and r.state_type.name, r.total_run_time.total_seconds(),
                      r.start_time and r.start_time.isoformat(), r.parameters, r.tags] for r in runs],
            "by_state": [[st and st.name, n] for st, n in s.execute(select(FlowRun.state_type, func.count()).group_by(FlowRun.state_type))
                         .all()],
            "long": one(select(func.count()).select_from(FlowRun).where(FlowRun.total_run_time > dt.timedelta(minutes=30))),
            "negative": one(select(func.count()).select_from(FlowRun).where(FlowRun.total_run_time < dt.timedelta(0))),
            "prod": one(select(func.count()).select_from(FlowRun).where(FlowRun.parameters["env"].as_string() == "prod")),
            "running": one(select(func.count()).select_from(FlowRun).where(FlowRun.state_type == StateType.RUNNING)),
            "started_after": one(select(func.count()).select_from(FlowRun).where(FlowRun.start_time > dt.datetime(2024, 4, 15, tzinfo=UTC))),
            "by_id": first is not None and s.get(FlowRun, first) is not None,
            "buckets": sorted([[str(b.automation_id), str(b.trigger_id), b.bucketing_key, b.count] for b in s.scalars(select(AutomationBucket))],
                              key=lambda r: json.dumps(r, sort_keys=True)),
            # Lookups by JSON text (SQLite) must keep finding the rows Postgres wrote, or the app
            # inserts the same key again: buckets equal by value but not by text.
            "duplicate_buckets": sum(n - 1 for n in Counter(
                (str(b.automation_id), str(b.trigger_id), json.dumps(b.bucketing_key, sort_keys=True))
                for b in s.scalars(select(AutomationBucket))).values()),
            "bucket_found": one(select(func.count()).select_from(AutomationBucket).where(AutomationBucket.bucketing_key == {"flow": "flow-1", "n": 1})),
        }


def sort_states(a):
    a["by_state"].sort(key=lambda r: (r[0] is None, r[0] or ""))
    return a


if __name__ == "__main__":
    cmd, db = sys.argv[1], sys.argv[2]
    if cmd == "upgrade":
        command.upgrade(alembic_config(db), "head")
    elif cmd == "heads":
        print(json.dumps(heads(db)))
    elif cmd == "seed":
        seed(db, int(sys.argv[3]))
    elif cmd == "write":
        write(db, float(sys.argv[3]))
    elif cmd == "answers":
        print(json.dumps(sort_states(answers(db)), sort_keys=True))
    else:
        sys.exit(__doc__)
