"""The contract (tests/contract.py) in memory mode: L1 plus the in-process bus.

The `trio` fixture (three coherent memory-mode caches) comes from tests/conftest.py.
"""

from .contract import CacheContract


class TestMemoryMode(CacheContract):
    pass
