"""A Celery app whose tasks use the module-level cache (`from twotier import
cache`): one changes an item (the database, then the seed's un-awaited
`cache.invalidate_tag(...)`, which blocks until Redis has it), one reads it
through `@cache.sync.cached`. Run by a prefork worker in
`integration/test_process_models.py`: the pool's children are forked from
the worker's main process, which imported this module (and, with
`APP_USE_AT_IMPORT=1`, used the cache) first.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from integration.apps import items
from twotier import cache

app = Celery("process_models", broker=os.environ["APP_BROKER"], backend=os.environ["APP_BACKEND"])
app.conf.broker_connection_retry_on_startup = True


@cache.sync.cached(ttl=300, key="item:{item_id}", tags=["item:{item_id}"])
def load_item(item_id: int) -> str:
    return items.read(item_id)


@app.task
def change_item(item_id: int, value: str) -> dict[str, Any]:
    items.write(item_id, value)
    cache.invalidate_tag(f"item:{item_id}")
    return {"pid": os.getpid(), "instance": cache.instance_id}


@app.task
def read_item(item_id: int) -> dict[str, Any]:
    return {"value": load_item(item_id), "pid": os.getpid(), "instance": cache.instance_id}


if os.environ.get("APP_USE_AT_IMPORT") == "1":
    load_item(0)  # used in the worker's main process, before it forks its pool
