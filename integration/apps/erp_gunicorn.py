"""The example ERP service (`compose/erp`, docs/erp-example.md) as gunicorn
serves it with uvicorn workers: `erp.app:app` itself, unchanged (its
module-level `from twotier import cache`, its lifespan, its SQLAlchemy
engine), behind a pass-through ASGI wrapper that adds two response headers
naming the worker that answered — `X-Worker-Pid` and `X-Worker-Instance`
(the cache's `instance_id`) — which the service's own JSON does not carry.

Run by `integration/test_process_models.py` as
`gunicorn integration.apps.erp_gunicorn:app --pythonpath compose
-k uvicorn_worker.UvicornWorker -w 3 --preload`.
"""

from __future__ import annotations

import os

from erp.app import app as service
from erp.cache import cache
from starlette.types import Message, Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":  # the lifespan (the cache's start and close), untouched
        await service(scope, receive, send)
        return

    async def send_naming_the_worker(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                *message.get("headers", []),
                (b"x-worker-pid", str(os.getpid()).encode()),
                (b"x-worker-instance", cache.instance_id.encode()),
            ]
            message = {**message, "headers": headers}
        await send(message)

    await service(scope, receive, send_naming_the_worker)
