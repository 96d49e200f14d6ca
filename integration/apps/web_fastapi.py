"""A FastAPI app with a module-level cache (the ERP example's shape, reduced):
`from twotier import cache`, started by `twotier.fastapi.lifespan`,
`@cache.cached` over the database, and an invalidation after each write. Run
by gunicorn with uvicorn workers and `--preload` in
`integration/test_process_models.py`.

With `APP_USE_AT_IMPORT=1` the module uses the cache when it is imported
(under `--preload`: in the gunicorn master, on an event loop that then ends).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI

from integration.apps import items
from twotier import cache
from twotier.fastapi import lifespan

app = FastAPI(lifespan=lifespan(cache))


@cache.cached(ttl=300, key="item:{item_id}", tags=["item:{item_id}"])
async def load_item(item_id: int) -> str:
    return await asyncio.to_thread(items.read, item_id)


@app.get("/item/{item_id}")
async def get_item(item_id: int) -> dict[str, Any]:
    return {"value": await load_item(item_id), "pid": os.getpid(), "instance": cache.instance_id}


@app.put("/item/{item_id}/{value}")
async def put_item(item_id: int, value: str) -> dict[str, Any]:
    await asyncio.to_thread(items.write, item_id, value)
    await cache.invalidate_tag(f"item:{item_id}")
    return {"ok": True, "pid": os.getpid(), "instance": cache.instance_id}


if os.environ.get("APP_USE_AT_IMPORT") == "1":
    asyncio.run(load_item(0))  # the cache used in the importing process, on a loop that ends
