"""The test Django project (auth, contenttypes, sessions, admin, and `shop`: UUID, JSON, aware
datetimes, decimals, booleans, M2M, constraints). Usage, with DB `sqlite:PATH` or a postgres URL:
  app.py migrate DB [APP MIG]  Django's own migrations make the schema (and seed its rows); with
                               APP MIG, migrate that app to MIG (`zero` unapplies it)
  app.py seed DB N             N customers with orders, through the ORM
  app.py write DB SECONDS      the app at work: ORM transactions (create, update, delete, M2M)
                               for SECONDS, then a JSON line {"transactions", "failed"}
  app.py create DB N TAG       N new orders through the ORM, each tagged TAG
  app.py answers DB            a JSON object of ORM answers (JSON keys, UUIDs, __date/__hour in
                               Europe/Berlin, decimal sums with their scale, booleans, M2M)
"""
import json
import os
import random
import sys
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["SQLITE2PG_DJANGO_DB"] = sys.argv[2]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.db.models import Count, Sum  # noqa: E402

from shop.models import Customer, Order, Tag  # noqa: E402

# Across the spring DST change in Berlin (2024-03-31 02:00 -> 03:00) and around midnight, where
# a UTC date and a Berlin date differ.
T0 = datetime(2024, 3, 30, 20, 0, tzinfo=timezone.utc)
# An order whose total ends in a zero: its scale shows whether the column kept it.
FIXED = uuid.UUID("00000000-0000-4000-8000-0000000000f1")


def seed(n):
    """n customers with three orders each (two tagged), through the ORM's bulk writes."""
    rnd = random.Random(11)
    tags = [Tag.objects.create(name=t) for t in ("gift", "rush", "wholesale")]
    Link = Order.tags.through
    for start in range(0, n, 2000):
        with transaction.atomic():
            customers, orders, links = [], [], []
            for i in range(start, min(n, start + 2000)):
                c = Customer(
                    id=uuid.UUID(int=rnd.getrandbits(128), version=4), email=f"c{i}@example.com",
                    active=i % 5 != 0, profile={"tier": ["gold", "silver"][i % 2], "n": i, "tags": ["a", i]},
                    joined_at=T0 - timedelta(days=i % 3000, microseconds=i * 7))
                customers.append(c)
                for j in range(3):
                    orders.append(Order(
                        customer=c, token=uuid.UUID(int=rnd.getrandbits(128), version=4),
                        total=Decimal(rnd.randint(0, 10**8)) / 100, paid=(i + j) % 3 == 0,
                        placed_at=T0 + timedelta(minutes=37 * (3 * i + j), microseconds=j),
                        data=None if j == 2 else {"kind": ["gift", "plain"][j], "note": f"n{i}", "items": [{"sku": i}]}))
            Customer.objects.bulk_create(customers)
            Order.objects.bulk_create(orders)
            for k, o in enumerate(orders):
                if k % 3 != 1:
                    links.append(Link(order_id=o.id, tag_id=tags[(k // 3 + k % 3) % 3].id))
            Link.objects.bulk_create(links)
    Order.objects.create(customer=customers[-1], token=FIXED, total=Decimal("524723.80"), placed_at=T0 - timedelta(days=1))


def write(seconds):
    rnd = random.Random()
    done = failed = 0
    errors = []
    end = time.time() + seconds
    while time.time() < end:
        try:
            with transaction.atomic():
                c = Customer.objects.order_by("?").first()
                k = rnd.randrange(4)
                if k == 0:
                    o = Order.objects.create(
                        customer=c, total=Decimal(rnd.randint(0, 10**6)) / 100,
                        placed_at=datetime.now(timezone.utc), data={"kind": "live"})
                    o.tags.add(*Tag.objects.order_by("?")[:1])
                elif k == 1:
                    o = c.orders.order_by("?").first()
                    if o:
                        o.paid = not o.paid
                        o.total = o.total + Decimal("0.10")
                        o.save()
                elif k == 2:
                    c.profile = {**c.profile, "seen": rnd.randrange(100)}
                    c.save()
                else:
                    o = c.orders.order_by("?").first()
                    if o and o.token != FIXED and rnd.random() < 0.3:
                        o.delete()
            done += 1
        except Exception as e:  # noqa: BLE001 - counted and reported, the run goes on
            failed += 1
            errors.append(f"{type(e).__name__}: {e}")
        time.sleep(0.01)
    print(json.dumps({"transactions": done, "failed": failed, "errors": errors[:5]}))


def create(n, tag):
    t, _ = Tag.objects.get_or_create(name=tag)
    c = Customer.objects.order_by("email").first()
    for i in range(n):
        o = Order.objects.create(customer=c, total=Decimal("19.90") * (i + 1),
                                 placed_at=T0 + timedelta(days=400, seconds=i), paid=True,
                                 data={"kind": "postgres", "i": i})
        o.tags.add(t)
    Customer.objects.create(email=f"new-{tag}@example.com", joined_at=T0, profile={"tier": "new"})


def answers():
    first = Customer.objects.order_by("email").first()
    some = Order.objects.order_by("token").first()
    return {
        "customers": Customer.objects.count(),
        "orders": Order.objects.count(),
        "json_key": Order.objects.filter(data__kind="gift").count(),
        "json_has_key": Order.objects.filter(data__has_key="note").count(),
        "json_path": Order.objects.filter(data__items__0__sku=3).count(),
        "json_profile": Customer.objects.filter(profile__tier="gold").count(),
        "uuid_pk": str(Customer.objects.get(pk=first.pk).email),
        "uuid_eq": Order.objects.filter(token=some.token).count(),
        "uuid_in": Order.objects.filter(customer_id__in=[first.pk]).count(),
        "date_berlin": Order.objects.filter(placed_at__date=date(2024, 3, 31)).count(),
        "hour_berlin_2": Order.objects.filter(placed_at__hour=2).count(),
        "hour_berlin_3": Order.objects.filter(placed_at__hour=3).count(),
        "by_day": [[str(d), n] for d, n in Order.objects.values_list("placed_at__date").annotate(n=Count("id")).order_by("placed_at__date")[:5]],
        "aware": str(Order.objects.order_by("placed_at").first().placed_at),
        "joined": str(Customer.objects.order_by("joined_at").first().joined_at),
        # Django's SQLite backend gives a sum six places, its Postgres backend the column's two:
        # compared in the column's scale (each value's own scale is compared in "totals").
        "sum_total": str(Order.objects.aggregate(s=Sum("total"))["s"].quantize(Decimal("0.01"))),
        "fixed_total": str(Order.objects.get(token=FIXED).total),
        "totals": [str(t) for t in Order.objects.order_by("token").values_list("total", flat=True)[:5]],
        "paid": Order.objects.filter(paid=True).count(),
        "active": Customer.objects.filter(active=False).count(),
        "tagged": {t.name: t.order_set.count() for t in Tag.objects.order_by("name")},
        "content_types": sorted(f"{c.app_label}.{c.model}" for c in __import__("django.contrib.contenttypes.models", fromlist=["ContentType"]).ContentType.objects.all()),
    }


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "migrate":
        call_command("migrate", *sys.argv[3:5], verbosity=0)
    elif cmd == "makemigrations":
        call_command("makemigrations", "shop", verbosity=1)
    elif cmd == "seed":
        seed(int(sys.argv[3]))
    elif cmd == "write":
        write(float(sys.argv[3]))
    elif cmd == "create":
        create(int(sys.argv[3]), sys.argv[4])
    elif cmd == "answers":
        print(json.dumps(answers(), sort_keys=True))
    else:
        sys.exit(__doc__)
