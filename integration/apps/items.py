"""The apps' database: one SQLite file (`APP_DB`) that every process reads, the
source of truth the cache sits in front of. One table, item id → value."""

from __future__ import annotations

import os
import sqlite3


def _connect() -> sqlite3.Connection:
    return sqlite3.connect(os.environ["APP_DB"], timeout=30, isolation_level=None)


def create(values: dict[int, str]) -> None:
    with _connect() as db:
        db.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, value TEXT)")
        db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?)", values.items())


def read(item_id: int) -> str:
    with _connect() as db:
        row = db.execute("SELECT value FROM items WHERE id = ?", (item_id,)).fetchone()
    return str(row[0]) if row else ""


def write(item_id: int, value: str) -> None:
    with _connect() as db:
        db.execute("INSERT OR REPLACE INTO items VALUES (?, ?)", (item_id, value))
