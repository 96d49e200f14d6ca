"""Customers (Kunden) and the per-user dashboard of an account manager.

Tags: module `customers`; entity `customer:{id}`; the dashboard is per user
(`user:{user_id}`). The user comes from a dependency (`X-User-Id`, standing in
for the real authentication). twotier.fastapi keys every dependency value by
default (hashed), so each manager has an entry of their own; the answer is sent
`private` with `Vary: X-User-Id`, read from the dependency's own parameters.
Only the session, which does not change the answer, is named in ignore=.
"""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter, Depends, Header, HTTPException
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .cache import cache, http_cached
from .db import Charge, Customer, get_session
from .schemas import CustomerOut, DashboardRow

router = APIRouter(tags=["customers"])


def current_user_id(x_user_id: int = Header(default=1, ge=1)) -> int:
    """The signed-in user (the real service reads its token)."""
    return x_user_id


@router.get("/customers/{customer_id}")
@http_cached(cache, ttl=600, tags=["customers", "customer:{customer_id}"], ignore=["session"])
async def get_customer(
    customer_id: int, session: AsyncSession = Depends(get_session)
) -> CustomerOut:
    customer = await session.get(Customer, customer_id)
    if customer is None:
        raise HTTPException(404, f"customer {customer_id} not found")
    return CustomerOut.model_validate(customer)


@router.get("/dashboard")
@http_cached(
    cache,
    ttl=120,
    tags=["customers", "dashboard", "user:{user_id}"],
    ignore=["session"],
)
async def dashboard(
    user_id: int = Depends(current_user_id), session: AsyncSession = Depends(get_session)
) -> list[DashboardRow]:
    open_charges = (
        select(Charge.customer_id, func.count().label("n"), func.sum(Charge.amount).label("s"))
        .where(Charge.status == "open")
        .group_by(Charge.customer_id)
        .subquery()
    )
    rows = await session.execute(
        select(Customer, open_charges.c.n, open_charges.c.s)
        .outerjoin(open_charges, open_charges.c.customer_id == Customer.id)
        .where(Customer.owner_user_id == user_id)
        .order_by(Customer.id)
    )
    return [
        DashboardRow(
            customer=CustomerOut.model_validate(c), open_charges=n or 0, open_amount=Decimal(s or 0)
        )
        for c, n, s in rows
    ]
