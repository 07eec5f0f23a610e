"""Streaming backends behind one interface: embedded (SQLite) and Apache Kafka.

The zone runtime, flows and tests use :class:`Backend` only; see :mod:`trustzones.streams.base`
for the contract and its ordering guarantees.
"""

from trustzones.streams._embedded import EmbeddedBackend, RecordCipher
from trustzones.streams.base import (
    Backend,
    Consumer,
    NewRecord,
    Record,
    RecordPosition,
    Transaction,
)

__all__ = [
    "Backend",
    "Consumer",
    "EmbeddedBackend",
    "NewRecord",
    "Record",
    "RecordCipher",
    "RecordPosition",
    "Transaction",
]
