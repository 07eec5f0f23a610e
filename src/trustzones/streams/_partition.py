"""Kafka's default key partitioner, so every backend puts a key in the same partition.

Apache Kafka's Java producer (``BuiltInPartitioner.partitionForKey``) and librdkafka's
``murmur2_random`` partitioner place a keyed record in
``(murmur2(key) & 0x7fffffff) % partitions``, where ``murmur2`` is the 32-bit MurmurHash2 variant
of ``org.apache.kafka.common.utils.Utils.murmur2`` (seed ``0x9747b28c``). The embedded backend
uses :func:`partition_for`; the Kafka backend configures librdkafka with
``partitioner=murmur2_random``; a test checks that both agree on a real broker.

:func:`murmur2` here is the reference. Where confluent-kafka is installed,
:func:`partition_for` asks librdkafka's implementation (``confluent_kafka.murmur2``, an
independent one: ~0.2 instead of 2-5 us a key) for ``bytes`` keys; tests hold the two to
each other.

Example::

    >>> murmur2(b"foobar")
    -790332482
    >>> partition_for(b"foobar", 12)
    6
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, cast

#: librdkafka's partitioner once looked up (None: confluent-kafka is not installed, or too
#: old to have it); looked up on first use, so that importing this module does not import
#: confluent-kafka (~40-70 ms) for a workspace that never partitions a key.
_UNRESOLVED: Any = object()
_fast: Any = _UNRESOLVED  # a Callable[[bytes, int], int], None, or _UNRESOLVED


def _librdkafka_partition() -> Callable[[bytes, int], int] | None:
    global _fast
    try:
        from confluent_kafka import murmur2 as fast
    except ImportError:  # the Kafka extra is not installed (or too old to have it)
        _fast = None
    else:
        _fast = fast
    return cast("Callable[[bytes, int], int] | None", _fast)


__all__ = ["murmur2", "partition_for"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<2I")  # the common 8-11 byte key


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` as a signed 32-bit integer (what Java's ``int`` holds)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length - (length & 3)
    for k in _WORDS.unpack_from(data) if end == 8 else struct.unpack_from(f"<{end >> 2}I", data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest:
        # The Java switch falls through from case 3 to case 1 (bytes are sign-extended there,
        # but only their low 8 bits survive the mask).
        if rest == 3:
            h ^= data[end + 2] << 16
        if rest >= 2:
            h ^= data[end + 1] << 8
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a record with ``key`` in a topic of ``partitions`` partitions."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    fast = _fast if _fast is not _UNRESOLVED else _librdkafka_partition()
    if fast is not None and type(key) is bytes:
        return int(fast(key, partitions))
    return (murmur2(key) & 0x7FFFFFFF) % partitions
