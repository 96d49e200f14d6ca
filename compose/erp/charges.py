"""Charges (Forderungen): one charge, the list, the statistics, and the update.

Tags (the seed's structure): module `charges`; entity `charge:{id}`; the list
and statistics carry the generic `list` / `stats` and the module's own
`charges:list` / `charges:stats`, so that one charge's update drops them and
not every list of every module.
"""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .cache import cache, http_cached, invalidate_tags, invalidates
from .db import Charge, Customer, get_session
from .schemas import ChargeOut, ChargeStats, ChargeUpdate

router = APIRouter(prefix="/charges", tags=["charges"])


@router.get("")
@http_cached(cache, ttl=180, tags=["charges", "list", "charges:list"], ignore=["session"])
async def list_charges(session: AsyncSession = Depends(get_session)) -> list[ChargeOut]:
    rows = await session.scalars(select(Charge).order_by(Charge.id))
    return [ChargeOut.model_validate(row) for row in rows]


@router.get("/stats")
@http_cached(cache, ttl=300, tags=["charges", "stats", "charges:stats"], ignore=["session"])
async def charge_stats(session: AsyncSession = Depends(get_session)) -> ChargeStats:
    count, total = (await session.execute(select(func.count(), func.sum(Charge.amount)))).one()
    open_total = await session.scalar(
        select(func.sum(Charge.amount)).where(Charge.status == "open")
    )
    total = Decimal(total or 0)
    return ChargeStats(
        count=count,
        total=total,
        open_total=Decimal(open_total or 0),
        average=(total / count).quantize(Decimal("0.01")) if count else Decimal(0),
    )


@router.get("/{charge_id}")
@http_cached(cache, ttl=180, tags=["charges", "charge:{charge_id}"], ignore=["session"])
async def get_charge(charge_id: int, session: AsyncSession = Depends(get_session)) -> ChargeOut:
    charge = await session.get(Charge, charge_id)
    if charge is None:
        raise HTTPException(404, f"charge {charge_id} not found")  # raised: never cached
    return ChargeOut.model_validate(charge)


@router.put("/{charge_id}")
@invalidates(
    cache,
    "charge:{charge_id}",
    "charges:list",
    "charges:stats",
    "report",
    also=["customer:{customer_id}", "user:{owner_user_id}"],
)
async def update_charge(
    charge_id: int, update: ChargeUpdate, session: AsyncSession = Depends(get_session)
) -> ChargeOut:
    """Write the database, then invalidate the tags (the seed's update pattern).

    The commit happens here, before `@invalidates` drops the tags; a 404, a
    422 or a failed commit raises, and then nothing is invalidated because
    nothing changed.
    """
    charge = await session.get(Charge, charge_id)
    if charge is None:
        raise HTTPException(404, f"charge {charge_id} not found")
    charge.amount = update.amount
    if update.description is not None:
        charge.description = update.description
    if update.status is not None:
        charge.status = update.status
    customer = await session.get(Customer, charge.customer_id)
    await session.commit()
    # Which customer and account manager see this charge is data, not an argument.
    owner = customer.owner_user_id if customer else 0
    await invalidate_tags([f"customer:{charge.customer_id}", f"user:{owner}"])
    return ChargeOut.model_validate(charge)
