"""The tracker app (SQLAlchemy + Alembic, shaped like MLflow's tracking store): a metrics
table whose primary key holds a boolean, and a migration that writes a default row. DB is
`sqlite:PATH` or a postgres URL. Usage:
  app.py upgrade DB          the app's Alembic migrations make the schema (and the default row)
  app.py log DB N            N metrics through the ORM, in a second experiment
  app.py write DB SECONDS    the app at work: metric batches, NaN flags flipped (a key change)
                             and runs deleted, then {"transactions", "failed", "errors"}
  app.py answers DB          a JSON object of ORM answers
"""
import json
import math
import random
import sys
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import BigInteger, Boolean, Column, DateTime, Float, ForeignKey, Integer, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Session

HERE = Path(__file__).resolve().parent


class Base(DeclarativeBase):
    pass


class Experiment(Base):
    __tablename__ = "experiments"
    experiment_id = Column(Integer, primary_key=True)
    name = Column(String(256), nullable=False, unique=True)
    lifecycle_stage = Column(String(32), nullable=False)
    created_at = Column(DateTime, nullable=False, server_default=func.current_timestamp())


class Metric(Base):
    __tablename__ = "metrics"
    key = Column(String(250), primary_key=True)
    value = Column(Float(precision=53), primary_key=True)
    timestamp = Column(BigInteger, primary_key=True)
    run_uuid = Column(String(32), primary_key=True)
    step = Column(BigInteger, primary_key=True)
    is_nan = Column(Boolean, primary_key=True)
    experiment_id = Column(Integer, ForeignKey("experiments.experiment_id"), nullable=False)


def url(db):
    if db.startswith("sqlite:"):
        return "sqlite:///" + db[len("sqlite:"):]
    return db.replace("postgres://", "postgresql+psycopg://", 1)


def engine(db):
    return create_engine(url(db), connect_args={"timeout": 30} if db.startswith("sqlite:") else {})


def upgrade(db):
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "alembic"))
    cfg.set_main_option("sqlalchemy.url", url(db))
    command.upgrade(cfg, "head")


def log(db, n):
    rnd = random.Random(5)
    with Session(engine(db)) as s:
        s.add(Experiment(experiment_id=1, name="churn model", lifecycle_stage="active"))
        for i in range(n):
            nan = i % 11 == 0
            s.add(Metric(key=["loss", "acc"][i % 2], value=0.0 if nan else rnd.random(), timestamp=1700000000000 + i // 4,
                         run_uuid=f"{i % 9:032x}", step=i // 2, is_nan=nan, experiment_id=rnd.choice([0, 1])))
        s.commit()


def write(db, seconds):
    rnd = random.Random()
    done = failed = 0
    errors = []
    end = time.time() + seconds
    with Session(engine(db)) as s:
        while time.time() < end:
            try:
                k = rnd.randrange(3)
                if k == 0:
                    for j in range(5):
                        s.add(Metric(key="live", value=rnd.random(), timestamp=int(time.time() * 1000), run_uuid=f"{rnd.randrange(9):032x}",
                                     step=rnd.randrange(10**6), is_nan=False, experiment_id=1))
                elif k == 1:
                    m = s.scalars(select(Metric).order_by(func.random()).limit(1)).first()
                    if m:
                        m.is_nan = not m.is_nan
                else:
                    run = f"{rnd.randrange(9):032x}"
                    for m in s.scalars(select(Metric).where(Metric.run_uuid == run, Metric.key == "live").limit(3)):
                        s.delete(m)
                s.commit()
                done += 1
            except Exception as e:  # noqa: BLE001 - counted and reported
                s.rollback()
                failed += 1
                errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.01)
    print(json.dumps({"transactions": done, "failed": failed, "errors": errors[:5]}))


def answers(db):
    with Session(engine(db)) as s:
        def one(q):
            return s.execute(q).scalar()
        return {
            "experiments": [[e.experiment_id, e.name] for e in s.scalars(select(Experiment).order_by(Experiment.experiment_id))],
            "metrics": one(select(func.count()).select_from(Metric)),
            "nan": one(select(func.count()).select_from(Metric).where(Metric.is_nan)),
            "not_nan_loss": one(select(func.count()).select_from(Metric).where(Metric.is_nan.is_(False), Metric.key == "loss")),
            "by_key": s.get(Metric, {"key": "loss", "value": 0.0, "timestamp": 1700000000000, "run_uuid": f"{0:032x}", "step": 0, "is_nan": True}) is not None,
            "latest": [[m.key, m.step, m.is_nan, repr(m.value)] for m in s.scalars(select(Metric).where(Metric.key != "live").order_by(Metric.timestamp.desc(), Metric.step.desc(), Metric.key, Metric.run_uuid).limit(5))],
            # Postgres sums a bigint as numeric (a Decimal), SQLite as an integer: compared as ints.
            "sum_steps": int(one(select(func.sum(Metric.step)).where(Metric.key != "live")) or 0),
            "per_experiment": [list(r) for r in s.execute(select(Metric.experiment_id, func.count()).group_by(Metric.experiment_id).order_by(Metric.experiment_id))],
        }


if __name__ == "__main__":
    cmd, db = sys.argv[1], sys.argv[2]
    if cmd == "upgrade":
        upgrade(db)
    elif cmd == "log":
        log(db, int(sys.argv[3]))
    elif cmd == "write":
        write(db, float(sys.argv[3]))
    elif cmd == "answers":
        print(json.dumps(answers(db), sort_keys=True))
    else:
        sys.exit(__doc__)
