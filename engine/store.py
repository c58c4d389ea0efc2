"""Per-partition RocksDB state store (rocksdict), sized for one multi-get and one write per batch.

Each assigned input partition has its own RocksDB directory ``<state_dir>/<topic>-<partition>``.
Entity records live under their UTF-8 key; engine metadata lives under keys starting with NUL,
which no entity key can (keys are validated non-empty strings and NUL-prefixed ids are refused):

    \\x00clock      the partition clock (`PartitionClock.encode`: max event time processed, ms,
                    decimal, then ``/<floor>`` if the wall clock raised its watermark)
    \\x00applied    the next input offset not yet applied to this store (decimal)
    \\x00changelog  the next changelog offset not yet reflected in this store (decimal)

A micro-batch's entity states, clock and applied offset are written in one atomic WriteBatch, so
after a crash the store is always exactly "all events before `applied`" — never half a batch.

The drift monitors (engine/monitors.py) keep their records under NUL-prefixed keys too:
``\\x00monitor`` (the partition's monitor state) and ``\\x00lbl:<entity>`` (label-join records),
written with the batch's entity states and restored from the changelog like them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path

from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from engine.config import RocksDBConfig

CLOCK_KEY = b"\x00clock"
APPLIED_KEY = b"\x00applied"
CHANGELOG_KEY = b"\x00changelog"

_COMPRESSION = {
    "none": DBCompressionType.none(),
    "lz4": DBCompressionType.lz4(),
    "zstd": DBCompressionType.zstd(),
    "snappy": DBCompressionType.snappy(),
}

_NO_WAL = WriteOptions()
_NO_WAL.disable_wal = True


@functools.cache
def shared_memory(block_cache_mb: int, memtable_budget_mb: int) -> tuple[Cache, WriteBufferManager]:
    """The process's block cache and memtable budget, one pair per setting: every store opened
    with the same `RocksDBConfig` shares them, so RocksDB's memory is bounded per process
    (block cache + memtable budget), not per partition. Never freed (stores come and go with
    rebalances; the budget stays)."""
    budget = WriteBufferManager(memtable_budget_mb * 1024 * 1024, False)  # flush early, never stall writers
    return Cache(block_cache_mb * 1024 * 1024), budget


def rocksdb_options(cfg: RocksDBConfig) -> Options:
    """rocksdict options for a state store: raw bytes, bloom filters, the process's shared block
    cache and memtable budget (`shared_memory`), compression."""
    cache, memtables = shared_memory(cfg.block_cache_mb, cfg.memtable_budget_mb)
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_write_buffer_manager(memtables)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_bloom_filter(cfg.bloom_bits_per_key, False)
    table.set_cache_index_and_filter_blocks(True)
    opts.set_block_based_table_factory(table)
    opts.set_compression_type(_COMPRESSION[cfg.compression])
    opts.set_write_buffer_size(cfg.write_buffer_mb * 1024 * 1024)
    return opts


class PartitionStore:
    """The state of one input partition.

    Not thread-safe: owned by the processing loop.
    """

    def __init__(self, path: Path, cfg: RocksDBConfig) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), rocksdb_options(cfg))

    def multi_get(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Encoded states of `keys` (None where absent) in one RocksDB multi-get."""
        names = list(keys)
        values = self._db[[k.encode() for k in names]]
        return dict(zip(names, values))

    def read_consistent(self, keys: list[bytes] | tuple[bytes, ...]) -> list[bytes | None]:
        """Values of raw `keys` from one consistent view (RocksDB's MultiGet reads every key from
        one implicit snapshot). The one method safe to call from another thread than the loop's
        (the query endpoint), as long as the store is not closed meanwhile."""
        return self._db[list(keys)]

    def read_meta(self) -> tuple[bytes | None, int | None]:
        """(encoded clock, applied offset) as last written."""
        clock, applied = self._db[[CLOCK_KEY, APPLIED_KEY]]
        return clock, int(applied) if applied is not None else None

    def read_meta_raw(self) -> tuple[bytes, int]:
        """Like `read_meta`, with the defaults of an empty store (no clock, offset 0)."""
        clock, applied = self.read_meta()
        return clock or b"", applied or 0

    def changelog_offset(self) -> int | None:
        raw = self._db.get(CHANGELOG_KEY)
        return int(raw) if raw is not None else None

    def set_changelog_offset(self, offset: int) -> None:
        self._db.put(CHANGELOG_KEY, str(offset).encode())

    def write(self, states: Mapping[str, bytes | None], clock: bytes, applied: int,
              changelog_offset: int | None = None) -> None:
        """Atomically store `states` (None deletes), the clock, the applied offset and (if given)
        the changelog offset the store now reflects."""
        wb = WriteBatch(raw_mode=True)
        for key, value in states.items():
            if value is None:
                wb.delete(key.encode())
            else:
                wb.put(key.encode(), value)
        wb.put(CLOCK_KEY, clock)
        wb.put(APPLIED_KEY, str(applied).encode())
        if changelog_offset is not None:
            wb.put(CHANGELOG_KEY, str(changelog_offset).encode())
        self._db.write(wb)

    def write_raw(self, states: Mapping[bytes, bytes | None], clock: bytes, applied: int,
                  changelog_offset: int) -> None:
        """Like `write`, with raw keys, for replaying the changelog (restore, standby): one atomic
        WriteBatch without the write-ahead log. Until `flush`, a crash may lose such writes, but
        only a suffix of them (one column family: RocksDB recovers a prefix of its writes), and
        each batch carries the changelog offset it reflects, so the store stays consistent and
        the replay resumes where it now stands. Call `flush` before the store is written through
        `write` again (WAL writes after unflushed WAL-less ones could outlive them)."""
        wb = WriteBatch(raw_mode=True)
        for key, value in states.items():
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        wb.put(CLOCK_KEY, clock)
        wb.put(APPLIED_KEY, str(applied).encode())
        wb.put(CHANGELOG_KEY, str(changelog_offset).encode())
        self._db.write(wb, _NO_WAL)

    def flush(self) -> None:
        """Persist the memtable (everything written so far, `write_raw` included) to disk."""
        self._db.flush(True)

    def scan(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        """Up to `limit` entity records (key, encoded state) in key order, starting after the key
        `after` (from the first entity if None). Metadata keys are never returned. For the
        incremental expiry sweep: one short iterator per batch, not the hot path of events."""
        # Entity keys never start with NUL, so b"\x01" is at or before the first of them.
        return self._scan(b"\x01", None, after, limit)

    def scan_prefix(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        """Like `scan`, over the keys that start with `prefix` (e.g. the monitors' label records)."""
        raw = prefix.encode()
        return self._scan(raw, raw, after, limit)

    def _scan(self, start: bytes, prefix: bytes | None, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        it = self._db.iter()
        # key + NUL is the smallest key greater than key.
        it.seek(start if after is None else after.encode() + b"\x00")
        out: list[tuple[str, bytes]] = []
        while it.valid() and len(out) < limit:
            key = it.key()
            if prefix is not None and not key.startswith(prefix):
                break
            out.append((key.decode(), it.value()))
            it.next()
        return out

    def get(self, key: str) -> bytes | None:
        """One record by key (metadata-style keys included); not for the per-event path."""
        return self._db.get(key.encode())

    def entity_count(self) -> int:
        """Number of entity records (a full scan; for tests and tooling, not the hot path)."""
        return sum(1 for k in self._db.keys() if not k.startswith(b"\x00"))

    def close(self) -> None:
        self._db.close()
