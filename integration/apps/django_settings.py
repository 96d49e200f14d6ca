"""The settings of the Django app of `integration/apps/web_django.py`: one
module, no database (the app reads and writes its row with `sqlite3`, through
`integration/apps/items.py`), no installed apps, no middleware, and
docs/deployment.md's Django `LOGGING`, verbatim."""

SECRET_KEY = "integration-tests-only"  # not a secret: a test app
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "integration.apps.web_django"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "twotier": {
            "format": "{asctime} [{process}] {levelname} twotier[{instance}/{tier}] {message}",
            "style": "{",
        },
    },
    "handlers": {
        "twotier": {"class": "logging.StreamHandler", "formatter": "twotier"},
    },
    "loggers": {
        "twotier": {"handlers": ["twotier"], "level": "INFO", "propagate": False},
    },
}
