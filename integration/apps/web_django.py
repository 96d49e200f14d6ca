"""A Django app with a module-level cache of its own: a `TwoTierCache` made
when the module is imported (configured here from the same `TWOTIER_*`
variables as the default cache), function views calling it through
`cache.sync` — `@cache.sync.cached` over the database for the read, the row
written then its tag invalidated for the write. Run by gunicorn (sync or
gthread workers, with or without `--preload`) in
`integration/test_process_models.py`, as `integration.apps.web_django:application`.

The module is also the project's URLconf (`ROOT_URLCONF`); the settings are
`integration/apps/django_settings.py`. With `APP_USE_AT_IMPORT=1` the module
uses the cache when it is imported: under `--preload`, in the gunicorn
master, before it forks its workers.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.http import require_GET, require_http_methods

from integration.apps import items
from twotier import TwoTierCache

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integration.apps.django_settings")

cache = TwoTierCache(
    redis_url=os.environ["TWOTIER_REDIS_URL"],
    namespace=os.environ["TWOTIER_NAMESPACE"],
    redis_timeout=float(os.environ.get("TWOTIER_REDIS_TIMEOUT", "0.1")),
    default_ttl=float(os.environ.get("TWOTIER_DEFAULT_TTL", "300")),
)


@cache.sync.cached(ttl=300, key="item:{item_id}", tags=["item:{item_id}"])
def load_item(item_id: int) -> str:
    return items.read(item_id)


@require_GET
def get_item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse(
        {"value": load_item(item_id), "pid": os.getpid(), "instance": cache.instance_id}
    )


@require_http_methods(["PUT"])
def put_item(request: HttpRequest, item_id: int, value: str) -> JsonResponse:
    items.write(item_id, value)
    cache.sync.invalidate_tag(f"item:{item_id}")  # returns once Redis has it
    return JsonResponse({"ok": True, "pid": os.getpid(), "instance": cache.instance_id})


urlpatterns = [
    path("item/<int:item_id>", get_item),
    path("item/<int:item_id>/<str:value>", put_item),
]

application = get_wsgi_application()

if os.environ.get("APP_USE_AT_IMPORT") == "1":
    load_item(0)  # the cache used in the importing process: L1, a loop thread, connections
