"""Reads the statement log of bench/fleet-first-pass: the one pool session that made every
tenant's first pass, one tenant after another. Prints a Markdown report of where a tenant's
time goes: in Postgres' statements, and between them.

usage: fleet_first_pass.py POSTGRES_LOG TENANTS
"""
import collections, datetime, re, sys

LOG, N = sys.argv[1], int(sys.argv[2])
# "2026-12-07 21:30:54.248 UTC,26183,LOG:  duration: 0.056 ms  bind s50: SELECT ..."
LINE = re.compile(r"^(\S+ \S+) \S+,(\d+),LOG:  duration: ([\d.]+) ms  (\w+)[^:]*: (.*)$")

events = collections.defaultdict(list)
for line in open(LOG, encoding="utf-8", errors="replace"):
    m = LINE.match(line.rstrip("\n"))
    if m:
        end = datetime.datetime.fromisoformat(m[1]).timestamp() * 1000
        events[m[2]].append((end, float(m[3]), m[4], re.sub(r"\s+", " ", m[5])[:70]))
# The tenants' session is the one that created their tables.
pid = next(p for p, ev in events.items() if any(q.startswith("CREATE TABLE \"tenant_") for *_, q in ev))
ev = events[pid]
first = next(i for i, e in enumerate(ev) if e[3].startswith("CREATE SCHEMA"))
ev = ev[first:]
span = ev[-1][0] - ev[0][0]
inside = sum(d for _, d, _, _ in ev)
gaps = [(b[0] - b[1] - a[0], a[3], b[3]) for a, b in zip(ev, ev[1:])]
short = sum(g for g, _, _ in gaps if g <= 2)
long = collections.Counter()
for g, before, after in gaps:
    if g > 2:
        long[(before, after)] += g
steps = collections.Counter(kind for _, _, kind, _ in ev)
# A statement is one simple query or one extended query (its execute step).
statements = steps["statement"] + steps["execute"]
per = lambda x: x / N
print(f"{N} tenants (SCALE 200 CRMs, 250 rows and 5 tables each), one after another on one session\n")
print("| a tenant's first pass | ms | share |")
print("| --- | --- | --- |")
print(f"| whole (first CREATE SCHEMA to the last statement, per tenant) | {per(span):.1f} | 100% |")
print(f"| in Postgres' statements ({per(statements):.0f} a tenant, {per(steps['parse']):.0f} of them parsed anew) "
      f"| {per(inside):.1f} | {inside / span:.0%} |")
print(f"| between statements, gaps of 2 ms or less (round trips, the daemon's work) | {per(short):.1f} | {short / span:.0%} |")
print(f"| between statements, gaps over 2 ms | {per(sum(long.values())):.1f} | {sum(long.values()) / span:.0%} |")
print("\nThe longest waits between two statements, per tenant:\n")
print("| ms | after | before |")
print("| --- | --- | --- |")
for (before, after), g in long.most_common(5):
    print(f"| {per(g):.1f} | `{before}` | `{after}` |")
