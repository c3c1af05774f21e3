"""Lake upkeep: compact a date's many small batch folders into one, and expire old dates.

The streaming job writes each micro-batch of a topic to ``<lake>/<topic>/date=D/batch=N``
(``streaming/jobs/sinks.py``; the batch is staged under ``<lake>/<topic>/_staging`` and renamed
into place; since 2026-11-29 its files also carry ``key`` and ``value``, NULL for every valid
row): a day of 2-second triggers leaves tens of thousands of small files.
:func:`compact_date` rewrites a date as one folder ``batch=-1`` (Spark's batch ids start at 0,
so no replayed batch can ever overwrite it) holding a few large files, rows de-duplicated on
their Kafka coordinates (a batch replayed after a crash can land twice) and sorted by event time.

Readers never see a half state: the new date folder is built under a hidden name (readers skip
names starting with ``.`` or ``_``) and swapped with the old one in one ``renameat2
(RENAME_EXCHANGE)`` call, then the old one is deleted. A batch folder that the streaming job
wrote while the compaction ran is moved into the new folder, not lost. Compaction is idempotent:
a compacted date with nothing new is left alone; one with late batches is compacted again.

:func:`expire` deletes whole dates older than the retention, by renaming them to a hidden name
first (a reader sees the date or not, never a part of it). Compaction and expiry hold a lock per
topic folder (:func:`topic_lock`) while they work, so two runs (overlapping backfill runs, a
manual one) take turns instead of deleting each other's hidden folders. pyarrow does the work,
not Spark: no JVM to start, and a date is read and written once.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cityos.errors import CityOSError

if TYPE_CHECKING:
    from cityos.settings import Settings

log = logging.getLogger(__name__)

COMPACTED_BATCH = -1
DEDUP_KEYS = ("topic", "partition", "offset")  # Kafka coordinates, in every lake row
SORT_KEY = "event_time"
ROWS_PER_FILE = 4_000_000
ROW_GROUP_ROWS = 256_000
_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_BATCH_DIR = re.compile(r"^batch=(-?\d+)$")
_HIDDEN = (".", "_")
_STALE = re.compile(r"^\.(compact|old|expired)-")


class LakeError(CityOSError):
    """The lake cannot be compacted or expired as asked; the message names the folder."""


@dataclass(frozen=True)
class Compaction:
    """What compacting one date did."""

    folder: Path
    batches: int  # batch folders read
    files_before: int
    files_after: int
    rows_before: int
    rows_after: int  # fewer when replayed batches had landed twice
    skipped: bool = False  # already compact

    def summary(self) -> dict[str, object]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


# ----------------------------------------------------------------------------- layout
def date_folders(topic_dir: Path) -> dict[date, Path]:
    """``date=YYYY-MM-DD`` folders of one topic's lake, by date (hidden folders skipped)."""
    found: dict[date, Path] = {}
    if topic_dir.is_dir():
        for child in topic_dir.iterdir():
            match = _DATE_DIR.match(child.name)
            if match and child.is_dir():
                found[date.fromisoformat(match.group(1))] = child
    return dict(sorted(found.items()))


def batch_folders(date_dir: Path) -> list[Path]:
    """``batch=N`` folders of a date, in batch order."""
    batches = [
        (int(m.group(1)), c)
        for c in date_dir.iterdir()
        if (m := _BATCH_DIR.match(c.name)) and c.is_dir()
    ]
    return [path for _, path in sorted(batches)]


def data_files(folder: Path) -> list[Path]:
    """Parquet files under a folder, skipping Spark's markers (``_SUCCESS``, ``.crc``)."""
    return sorted(
        p
        for p in folder.rglob("*.parquet")
        if not any(part.startswith(_HIDDEN) for part in p.relative_to(folder).parts)
    )


def dates_in(start: datetime, end: datetime) -> list[date]:
    """Lake dates (UTC) holding events of ``[start, end)``."""
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return (
        [first + timedelta(days=i) for i in range((last - first).days + 1)] if end > start else []
    )


# ----------------------------------------------------------------------------- swap
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _libc_renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None


_renameat2 = _libc_renameat2()


def exchange(a: Path, b: Path) -> None:
    """Swap two folders atomically (Linux ``renameat2(RENAME_EXCHANGE)``)."""
    if _renameat2 is None:
        raise LakeError(f"atomic folder exchange needs Linux renameat2: cannot swap {a} and {b}")
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        errno = ctypes.get_errno()
        raise LakeError(f"cannot swap {a} and {b}: {os.strerror(errno)}")


def _hidden_sibling(folder: Path, tag: str) -> Path:
    return folder.parent / f".{tag}-{folder.name}-{uuid.uuid4().hex[:8]}"


@contextmanager
def topic_lock(topic_dir: Path) -> Iterator[None]:
    """Hold a topic folder's upkeep lock (``flock`` on ``<lake>/.<topic>.lock``, beside it and
    hidden) for a block.

    Compaction and expiry take it for all their work on the topic, so :func:`clean_stale` (which
    runs under it) only ever meets folders left by a run that is gone, never the staged or
    swapped-out folder of one still running (an overlapping backfill run, a manual one): that
    run waits instead. The kernel drops the lock when its holder dies. A missing folder has
    nothing to guard.
    """
    if not topic_dir.is_dir():
        yield
        return
    path = topic_dir.parent / f".{topic_dir.name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s: another compaction or expiry runs", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def clean_stale(topic_dir: Path) -> int:
    """Delete what an interrupted compaction or expiry left behind (hidden folders), under the
    topic's lock."""
    with topic_lock(topic_dir):
        return _clean_stale(topic_dir)


def _clean_stale(topic_dir: Path) -> int:
    removed = 0
    if topic_dir.is_dir():
        for child in topic_dir.iterdir():
            if _STALE.match(child.name) and child.is_dir():
                shutil.rmtree(child)
                removed += 1
    return removed


# ----------------------------------------------------------------------------- compaction
def _utc_timestamps(table: pa.Table) -> pa.Table:
    """Spark writes timestamps as INT96 (read as naive nanoseconds, UTC by definition); write
    them back as microseconds marked UTC, which Spark reads as the same ``timestamp`` type."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type) and (f.type.tz is None or f.type.unit == "ns"):
            utc = pa.timestamp("us", tz="UTC")
            table = table.set_column(i, f.with_type(utc), table.column(i).cast(utc, safe=False))
    return table


def _read(files: Iterable[Path]) -> pa.Table:
    # file columns only (no hive keys from the path); Spark's schema metadata is dropped, as
    # the merged schema may differ from any one file's
    tables = [
        _utc_timestamps(pq.ParquetFile(f).read().replace_schema_metadata(None)) for f in files
    ]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


def _dedup(table: pa.Table) -> pa.Table:
    """Keep the first row of each Kafka (topic, partition, offset)."""
    if not all(k in table.column_names for k in DEDUP_KEYS) or table.num_rows == 0:
        return table
    indexed = table.select(list(DEDUP_KEYS)).append_column(
        "_row", pa.array(range(table.num_rows), pa.int64())
    )
    first = indexed.group_by(list(DEDUP_KEYS), use_threads=False).aggregate([("_row", "min")])
    keep = pc.sort_indices(first["_row_min"])
    return table.take(pc.take(first["_row_min"], keep))


def _write(table: pa.Table, folder: Path) -> int:
    """The table as ``part-NNNNN.parquet`` files of at most ROWS_PER_FILE rows; files written."""
    folder.mkdir(parents=True)
    chunks = range(0, max(table.num_rows, 1), ROWS_PER_FILE)
    for n, offset in enumerate(chunks):
        pq.write_table(
            table.slice(offset, ROWS_PER_FILE),
            folder / f"part-{n:05d}.parquet",
            row_group_size=ROW_GROUP_ROWS,
            compression="zstd",
            coerce_timestamps="us",
            allow_truncated_timestamps=True,
        )
    return len(chunks)


def compact_date(date_dir: Path) -> Compaction:
    """Rewrite one ``date=D`` folder as a single ``batch=-1`` folder, atomically (under the
    topic's lock)."""
    with topic_lock(date_dir.parent):
        return _compact_date(date_dir)


def _compact_date(date_dir: Path) -> Compaction:
    batches = batch_folders(date_dir)
    files = [f for b in batches for f in data_files(b)]
    rows_before = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if not batches or [b.name for b in batches] == [f"batch={COMPACTED_BATCH}"]:
        return Compaction(
            date_dir, len(batches), len(files), len(files), rows_before, rows_before, skipped=True
        )
    table = _dedup(_read(files))
    if SORT_KEY in table.column_names:
        table = table.sort_by(SORT_KEY)
    staged = _hidden_sibling(date_dir, "compact")
    files_after = _write(table, staged / f"batch={COMPACTED_BATCH}")
    written = sum(pq.ParquetFile(f).metadata.num_rows for f in data_files(staged))
    if written != table.num_rows:
        shutil.rmtree(staged)
        raise LakeError(f"{date_dir}: wrote {written} rows, expected {table.num_rows}")

    exchange(staged, date_dir)  # date_dir now holds the compacted rows, `staged` the old ones
    read = {b.name for b in batches}
    for late in batch_folders(staged):  # written by the streaming job while we compacted
        if late.name not in read:
            late.rename(date_dir / late.name)
            log.info("kept batch folder %s written during compaction", date_dir / late.name)
    shutil.rmtree(staged)
    result = Compaction(
        date_dir, len(batches), len(files), files_after, rows_before, table.num_rows
    )
    log.info("compacted %s", result.summary())
    return result


def compact(topic_dirs: Iterable[Path], start: datetime, end: datetime) -> list[Compaction]:
    """Compact the dates of ``[start, end)`` in each topic's lake (missing dates are skipped)."""
    wanted = set(dates_in(start, end))
    results = []
    for topic_dir in topic_dirs:
        with topic_lock(topic_dir):
            _clean_stale(topic_dir)
            for day, folder in date_folders(topic_dir).items():
                if day in wanted:
                    results.append(_compact_date(folder))
    return results


# ----------------------------------------------------------------------------- retention
def expire(topic_dirs: Iterable[Path], keep_days: int, end: datetime) -> list[Path]:
    """Delete dates older than ``keep_days`` before ``end``'s date; returns the folders removed.

    With ``keep_days=30`` and ``end`` on 2024-03-31 the dates before 2024-03-01 go.
    """
    if keep_days < 1:
        raise LakeError(f"lake retention must keep at least one day, got {keep_days}")
    cutoff = end.date() - timedelta(days=keep_days)
    removed = []
    for topic_dir in topic_dirs:
        with topic_lock(topic_dir):
            _clean_stale(topic_dir)
            for day, folder in date_folders(topic_dir).items():
                if day < cutoff:
                    hidden = _hidden_sibling(folder, "expired")
                    folder.rename(hidden)
                    shutil.rmtree(hidden)
                    removed.append(folder)
    if removed:
        log.info("expired %d lake dates before %s", len(removed), cutoff.isoformat())
    return removed


def topic_folders(lake_dir: Path, topics: Iterable[str]) -> Iterator[Path]:
    """Each topic's lake folder (``<lake>/<topic>``); absent ones are skipped."""
    for topic in topics:
        folder = lake_dir / topic
        if folder.is_dir():
            yield folder


# ----------------------------------------------------------------------------- DAG entry points


def plain_utc(moment: datetime) -> datetime:
    """A plain UTC ``datetime`` (Airflow hands tasks pendulum DateTimes)."""
    if moment.tzinfo is None:
        raise LakeError(f"interval bounds must be timezone-aware: {moment!r}")
    m = moment.astimezone(UTC)
    return datetime(m.year, m.month, m.day, m.hour, m.minute, m.second, m.microsecond, tzinfo=UTC)


def _topic_dirs(settings: Settings) -> list[Path]:
    from cityos.topics import Topics

    return list(topic_folders(settings.lake_dir, Topics(settings.topic_prefix).sources()))  # type: ignore[arg-type]


def compact_lake(settings: Settings, start: datetime, end: datetime) -> dict[str, object]:
    """The `retention` DAG's compaction: every source topic's dates of ``[start, end)``."""
    results = compact(_topic_dirs(settings), plain_utc(start), plain_utc(end))
    return {
        "dates": len(results),
        "compacted": sum(not r.skipped for r in results),
        "files_before": sum(r.files_before for r in results),
        "files_after": sum(r.files_after for r in results),
        "rows_before": sum(r.rows_before for r in results),
        "rows_after": sum(r.rows_after for r in results),
    }


def expire_lake(
    settings: Settings, end: datetime, keep_days: int | None = None
) -> dict[str, object]:
    """The `retention` DAG's expiry: dates older than the retention before ``end``."""
    days = keep_days or settings.lake_retention_days
    removed = expire(_topic_dirs(settings), days, plain_utc(end))
    return {"keep_days": days, "removed": [f"{p.parent.name}/{p.name}" for p in removed]}
