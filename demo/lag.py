"""Samples the daemon's replication lag from its /metrics every 250 ms until SIGTERM, printing a
line every 5 s; then writes p50/p99/max of the samples taken while streaming to SUMMARY_JSON.
Usage: lag.py METRICS_URL SUMMARY_JSON"""
import json
import signal
import sys
import time
import urllib.request

url, out = sys.argv[1], sys.argv[2]
stopping = False


def stop(_sig, _frame):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)


def scrape():
    try:
        body = urllib.request.urlopen(url, timeout=1).read().decode()
    except OSError:
        return None
    values = {}
    for line in body.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


samples, last_print, last_applied, last_t = [], 0.0, None, None
while not stopping:
    m = scrape()
    now = time.monotonic()
    if m and m.get('sqlite2pg_phase{phase="streaming"}') == 1:
        lag = m.get("sqlite2pg_replication_lag_seconds", 0.0)
        samples.append(lag)
        applied = sum(v for k, v in m.items() if k.startswith("sqlite2pg_changes_applied_total"))
        if now - last_print >= 5:
            rate = (applied - last_applied) / (now - last_t) if last_applied is not None else 0.0
            print(f"   lag {lag * 1000:7.1f} ms, {int(m.get('sqlite2pg_replication_lag_changes', 0))} changes behind; "
                  f"{rate:6.0f} changes/s applied", flush=True)
            last_print, last_applied, last_t = now, applied, now
    time.sleep(0.25)

samples.sort()


def pick(q):
    return samples[min(len(samples) - 1, int(q * len(samples)))] if samples else None


with open(out, "w") as f:
    json.dump({"samples": len(samples), "p50_s": pick(0.5), "p99_s": pick(0.99), "max_s": pick(1.0)}, f)
