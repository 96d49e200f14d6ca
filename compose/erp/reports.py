"""Reports (Berichte): revenue per month. Tags: `report`, `reports:revenue`.
Expensive and read often: a longer TTL, dropped by every change of a charge."""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter, Depends
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .cache import cache, http_cached
from .db import Charge, get_session
from .schemas import RevenueRow

router = APIRouter(prefix="/reports", tags=["reports"])


@router.get("/revenue")
@http_cached(cache, ttl=900, tags=["report", "reports:revenue"], ignore=["session"])
async def revenue(session: AsyncSession = Depends(get_session)) -> list[RevenueRow]:
    months: dict[str, tuple[int, Decimal]] = {}
    for booked_on, amount in await session.execute(
        select(Charge.booked_on, Charge.amount).where(Charge.status != "cancelled")
    ):
        key = booked_on.strftime("%Y-%m")
        n, total = months.get(key, (0, Decimal(0)))
        months[key] = (n + 1, total + amount)
    return [RevenueRow(month=m, charges=n, revenue=t) for m, (n, t) in sorted(months.items())]
