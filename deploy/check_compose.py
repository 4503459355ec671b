"""Lints docker-compose.example.yml without a Docker engine: the services the deployment needs,
sqlite2pg sharing the bot's volume and uid, every mounted file present, no literal password."""
import pathlib
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
doc = yaml.safe_load((root / "docker-compose.example.yml").read_text())
problems = []
services = doc.get("services", {})
for name in ("bot", "postgres", "sqlite2pg", "prometheus", "grafana"):
    if name not in services:
        problems.append(f"service {name} is missing")
s2p, bot = services.get("sqlite2pg", {}), services.get("bot", {})
shared = {v.split(":")[0] for v in s2p.get("volumes", [])} & {v.split(":")[0] for v in bot.get("volumes", [])}
if not shared:
    problems.append("sqlite2pg does not share a volume with the bot (it must read the bot's SQLite file)")
if s2p.get("user") != bot.get("user"):
    problems.append("sqlite2pg must run as the bot's user to add triggers to its file")
if services.get("postgres", {}).get("image", "").split(":")[-1].split("-")[0] != "16":
    problems.append("postgres should be postgres:16")
for svc in services.values():
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("./") and not (root / src).exists():
            problems.append(f"mounted path {src} does not exist")
    env = svc.get("environment", {})
    for k, val in (env.items() if isinstance(env, dict) else []):
        if "PASSWORD" in k and not str(val).startswith("${"):
            problems.append(f"{k} holds a literal password; use ${{POSTGRES_PASSWORD}}")
undeclared = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(".")} - set(doc.get("volumes", {}))
if undeclared:
    problems.append(f"named volumes not declared: {sorted(undeclared)}")
if problems:
    sys.exit("docker-compose.example.yml:\n  " + "\n  ".join(problems))
print(f"docker-compose.example.yml: {len(services)} services ok")
