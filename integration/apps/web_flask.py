"""A Flask app with a module-level cache, as an ERP's sync views use it:
`from twotier import cache` (configured by `TWOTIER_*`), `@cache.sync.cached`
over the database, and the seed's un-awaited `cache.invalidate_tag(...)`
after a write. Run by gunicorn (sync or gthread workers, with or without
`--preload`) in `integration/test_process_models.py`.

With `APP_USE_AT_IMPORT=1` the module uses the cache when it is imported, as
an app that warms its cache at start-up does: under `--preload` that is the
gunicorn master, before it forks its workers.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from integration.apps import items
from twotier import cache

app = Flask(__name__)


@cache.sync.cached(ttl=300, key="item:{item_id}", tags=["item:{item_id}"])
def load_item(item_id: int) -> str:
    return items.read(item_id)


@app.get("/item/<int:item_id>")
def get_item(item_id: int) -> ResponseReturnValue:
    return jsonify(value=load_item(item_id), pid=os.getpid(), instance=cache.instance_id)


@app.get("/async/item/<int:item_id>")
async def get_item_async(item_id: int) -> ResponseReturnValue:
    """A Flask `async def` view: each request runs on an event loop of its own
    (asgiref), so the cache is called through `cache.sync`, which hands the
    call to the cache's own loop (docs/deployment.md, "Flask async views")."""
    stats = cache.sync.get_stats()
    return jsonify(
        value=load_item(item_id),
        pid=os.getpid(),
        instance=cache.instance_id,
        l1_hits=stats["l1_hits"],
    )


@app.put("/item/<int:item_id>/<value>")
def put_item(item_id: int, value: str) -> ResponseReturnValue:
    items.write(item_id, value)
    cache.invalidate_tag(f"item:{item_id}")  # blocks until Redis has it (docs/sync.md)
    return jsonify(ok=True, pid=os.getpid(), instance=cache.instance_id)


if os.environ.get("APP_USE_AT_IMPORT") == "1":
    load_item(0)  # the cache used in the importing process: L1, a loop thread, connections
