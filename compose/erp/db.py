"""The database: SQLAlchemy 2 async models, the session dependency, and the demo data.

SQLite (a file, `erp.sqlite3` in the working directory) unless `DATABASE_URL`
names another database; `postgresql://…` URLs are driven by asyncpg. Several
instances may share one SQLite file: WAL mode and a busy timeout let their
writes queue instead of failing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
from collections.abc import AsyncIterator
from decimal import Decimal

from sqlalchemy import ForeignKey, Numeric, String, event
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    city: Mapped[str] = mapped_column(String(60))
    owner_user_id: Mapped[int] = mapped_column(index=True)  # the account manager


class Charge(Base):
    __tablename__ = "charges"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    description: Mapped[str] = mapped_column(String(200))
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    status: Mapped[str] = mapped_column(String(20), default="open")
    booked_on: Mapped[dt.date]


class Article(Base):
    __tablename__ = "articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(20), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    category: Mapped[str] = mapped_column(String(40), index=True)
    price: Mapped[Decimal] = mapped_column(Numeric(12, 2))


class Stock(Base):
    __tablename__ = "stock"
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id"), primary_key=True)
    warehouse: Mapped[str] = mapped_column(String(20), primary_key=True)
    quantity: Mapped[int]


class Meta(Base):
    __tablename__ = "erp_meta"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(100))


def database_url() -> str:
    url = os.environ.get("DATABASE_URL") or "sqlite:///erp.sqlite3"
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url.removeprefix(plain)
    return url


def make_engine(url: str) -> AsyncEngine:
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_size=10, pool_pre_ping=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(connection: object, _record: object) -> None:
        cursor = connection.cursor()  # type: ignore[attr-defined]  # the DB-API connection
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


engine = make_engine(database_url())
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)


async def get_session() -> AsyncIterator[AsyncSession]:
    """The request's session (a FastAPI dependency). Writes commit in the handler,
    before their tags are invalidated: never here, after the response."""
    async with SessionLocal() as session:
        yield session


# --- first start: schema and demo data --------------------------------------------------

CATEGORIES = ["tools", "fasteners", "electrical", "plumbing", "safety"]
WAREHOUSES = ["north", "south"]
CITIES = ["Berlin", "Hamburg", "München", "Köln", "Leipzig", "Dresden"]


def demo_rows() -> list[Base]:
    rng = random.Random(42)  # noqa: S311  # demo data: the same in every instance and run
    rows: list[Base] = []
    for i in range(1, 51):
        rows.append(
            Customer(
                id=i,
                name=f"Kunde {i:03d} GmbH",
                city=rng.choice(CITIES),
                owner_user_id=1 + (i - 1) % 5,
            )
        )
    for i in range(1, 101):
        rows.append(
            Article(
                id=i,
                sku=f"A-{i:05d}",
                name=f"Artikel {i}",
                category=CATEGORIES[(i - 1) % len(CATEGORIES)],
                price=Decimal(rng.randint(100, 50_000)) / 100,
            )
        )
        for warehouse in WAREHOUSES:
            rows.append(Stock(article_id=i, warehouse=warehouse, quantity=rng.randint(0, 500)))
    start = dt.date(2024, 1, 1)
    for i in range(1, 201):
        rows.append(
            Charge(
                id=i,
                customer_id=rng.randint(1, 50),
                description=f"Rechnung {i}",
                amount=Decimal(rng.randint(1_000, 500_000)) / 100,
                status=rng.choice(["open", "open", "paid"]),
                booked_on=start + dt.timedelta(days=rng.randint(0, 364)),
            )
        )
    return rows


async def init_database() -> None:
    """Create the schema and seed the demo data, once, whichever instance starts first.

    Instances started together race here: creating a table another one just
    created, or inserting the marker row it just inserted, fails, and the
    loser looks again.
    """
    for attempt in range(20):
        try:
            async with engine.begin() as connection:
                await connection.run_sync(Base.metadata.create_all)
            async with SessionLocal() as session, session.begin():
                if await session.get(Meta, "seeded") is not None:
                    return
                session.add(Meta(name="seeded", value=dt.datetime.now(dt.UTC).isoformat()))
                await session.flush()  # the marker first: a second seeder fails here
                rows = demo_rows()
                # Parents first: without relationship()s the unit of work does not
                # order the inserts by foreign key (PostgreSQL checks them at once).
                for model in (Customer, Article, Stock, Charge):
                    session.add_all([row for row in rows if type(row) is model])
                    await session.flush()
            return
        except (IntegrityError, OperationalError, ProgrammingError):
            if attempt == 19:
                raise
            await asyncio.sleep(0.2 + random.random() / 5)  # noqa: S311  # not crypto
