"""The example ERP service (docs/erp-example.md).

    python -m uvicorn erp.app:app --app-dir compose --port 8000

Environment: TWOTIER_REDIS_URL, TWOTIER_NAMESPACE (and the other TWOTIER_*
variables) for the cache; DATABASE_URL for the database (default: the SQLite
file erp.sqlite3 in the working directory). The first instance to start
creates the schema and seeds the demo data.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from twotier.fastapi import lifespan

from . import articles, charges, customers, inventory, ops, reports
from .cache import cache
from .db import engine, init_database


@contextlib.asynccontextmanager
async def database(app: FastAPI) -> AsyncIterator[None]:
    await init_database()
    try:
        yield
    finally:
        await engine.dispose()


app = FastAPI(title="ERP example (twotier)", lifespan=lifespan(cache, database))
for module in (charges, articles, inventory, customers, reports, ops):
    app.include_router(module.router)
