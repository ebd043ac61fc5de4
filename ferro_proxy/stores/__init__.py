"""Persistence for gateway keys, config versions, the audit log and request logs.

Three backends behind one contract (`base.py`): memory, SQLite (aiosqlite, WAL) and
Postgres (asyncpg, pooled). `open_stores(gateway)` opens what the environment selects.
"""

from ferro_proxy.stores.base import AuditStore, ConfigStore, KeyStore, LogQuery, LogStore
from ferro_proxy.stores.hub import StoreHub, open_stores
from ferro_proxy.stores.records import AuditEntry, ConfigVersion, KeyRecord

__all__ = [
    "AuditEntry",
    "AuditStore",
    "ConfigStore",
    "ConfigVersion",
    "KeyRecord",
    "KeyStore",
    "LogQuery",
    "LogStore",
    "StoreHub",
    "open_stores",
]
