"""The API's JSON shapes. Money is a Decimal in the database and a JSON number on the wire."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

Money = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ChargeOut(Out):
    id: int
    customer_id: int
    description: str
    amount: Money
    status: str
    booked_on: dt.date


class ChargeUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: Annotated[Decimal, Field(max_digits=12, decimal_places=2)]
    description: str | None = Field(default=None, min_length=1, max_length=200)
    status: str | None = Field(default=None, pattern="^(open|paid|cancelled)$")


class ChargeStats(BaseModel):
    count: int
    total: Money
    open_total: Money
    average: Money


class ArticleOut(Out):
    id: int
    sku: str
    name: str
    category: str
    price: Money


class ArticleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=100)
    category: str | None = Field(default=None, min_length=1, max_length=40)
    price: Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)] | None = None


class StockOut(BaseModel):
    article_id: int
    warehouse: str
    quantity: int


class Movement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warehouse: str
    delta: int


class CustomerOut(Out):
    id: int
    name: str
    city: str
    owner_user_id: int


class DashboardRow(BaseModel):
    customer: CustomerOut
    open_charges: int
    open_amount: Money


class RevenueRow(BaseModel):
    month: str
    charges: int
    revenue: Money
