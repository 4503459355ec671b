"""Settings of the test Django project: the database comes from SQLITE2PG_DJANGO_DB, either
`sqlite:PATH` or a postgres:// URL, so one project runs on both sides of the move."""
import os
from urllib.parse import unquote, urlparse

SECRET_KEY = "test-only"
USE_TZ = True
TIME_ZONE = "Europe/Berlin"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.admin",
    "django.contrib.messages",
    "shop",
]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"


def _database(spec):
    if spec.startswith("sqlite:"):
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": spec[len("sqlite:"):],
                "OPTIONS": {"timeout": 30}}
    u = urlparse(spec)
    return {"ENGINE": "django.db.backends.postgresql", "NAME": u.path.lstrip("/"),
            "USER": unquote(u.username or ""), "PASSWORD": unquote(u.password or ""),
            "HOST": u.hostname, "PORT": u.port or 5432}


DATABASES = {"default": _database(os.environ["SQLITE2PG_DJANGO_DB"])}
