"""The resume manifest: which tiles were discovered, which images were fetched and which failed.

A SQLite file (WAL journal, one short transaction per fact), safe to open from several threads
and processes at once and safe against ``kill -9``: a fact is either committed or absent. A
tile's discovered records are committed together with the tile, so a tile is never half
discovered. An image counts as fetched only once its file has been renamed into place; a file
that was renamed but not yet recorded is verified and adopted on the next run (see
``download.py``), so a rerun fetches exactly what is missing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa

from contracts.tables import IMAGES, conform

SCHEMA = """
CREATE TABLE IF NOT EXISTS tiles (tile TEXT, query_key TEXT, n_images INTEGER, discovered_at TEXT,
                                  PRIMARY KEY (tile, query_key));
CREATE TABLE IF NOT EXISTS discovered (tile TEXT, query_key TEXT, image_id TEXT, record TEXT,
                                       PRIMARY KEY (tile, query_key, image_id));
CREATE TABLE IF NOT EXISTS fetched (image_id TEXT PRIMARY KEY, path TEXT, sha256 TEXT, width INTEGER,
                                    height INTEGER, fetched_at TEXT, record TEXT);
CREATE TABLE IF NOT EXISTS failed (image_id TEXT PRIMARY KEY, stage TEXT, reason TEXT, failed_at TEXT);
"""


_IMAGES_SQL = """
SELECT f.image_id, 'mapillary' AS source,
       json_extract(record, '$.sequence_id') AS sequence_id, json_extract(record, '$.captured_at') AS captured_at,
       json_extract(record, '$.compass_angle') AS compass_angle, json_extract(record, '$.is_pano') AS is_pano,
       json_extract(record, '$.camera_type') AS camera_type, json_extract(record, '$.lon') AS lon,
       json_extract(record, '$.lat') AS lat, width, height, path, sha256, fetched_at
FROM fetched AS f JOIN wanted USING (image_id) ORDER BY f.image_id
"""


@contextmanager
def _using(db: sqlite3.Connection):
    """The connection itself; rolls back an open transaction if the block fails."""
    try:
        yield db
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _json(record: dict[str, Any]) -> str:
    return json.dumps(record, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))


_WAL_SWITCH = threading.Lock()


def _switch_to_wal(db: sqlite3.Connection, attempts: int = 100, pause_s: float = 0.05) -> None:
    """Put the file in WAL mode. SQLite answers 'database is locked' at once, without its busy
    timeout, when connections race to switch a new file: serialise that within this process and
    retry briefly against other processes."""
    for attempt in range(attempts):
        try:
            with _WAL_SWITCH:
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(pause_s)


class Manifest:
    """The manifest file at ``path`` (created with its folder when missing)."""

    BATCH = 64  # fetched entries per commit

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connect().executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections must not cross threads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            _switch_to_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def close(self) -> None:
        """Commit pending entries and close this thread's connection."""
        self.flush()
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _write(self, sql: str, rows: Iterable[tuple]) -> None:
        with _using(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(sql, rows)
            db.execute("COMMIT")

    # discovery ---------------------------------------------------------------------------------
    def tile_records(self, tile: str, query_key: str) -> list[dict[str, Any]] | None:
        """The records discovered for ``tile`` under ``query_key``; None if that tile was not discovered yet."""
        with _using(self._connect()) as db:
            if db.execute("SELECT 1 FROM tiles WHERE tile=? AND query_key=?", (tile, query_key)).fetchone() is None:
                return None
            rows = db.execute("SELECT record FROM discovered WHERE tile=? AND query_key=? ORDER BY image_id",
                              (tile, query_key)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def record_tile(self, tile: str, query_key: str, records: list[dict[str, Any]]) -> None:
        """Commit ``tile`` and its discovered ``records`` in one transaction."""
        with _using(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM discovered WHERE tile=? AND query_key=?", (tile, query_key))
            db.executemany("INSERT OR REPLACE INTO discovered VALUES (?, ?, ?, ?)",
                           [(tile, query_key, r["image_id"], _json(r)) for r in records])
            db.execute("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?, ?)", (tile, query_key, len(records), _now()))
            db.execute("COMMIT")

    # downloads ---------------------------------------------------------------------------------
    def fetched(self, image_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Fetched entries by image id (``path``, ``sha256``, ``width``, ``height``, ``fetched_at``, ``record``)."""
        self.flush()
        with _using(self._connect()) as db:
            rows = db.execute("SELECT image_id, path, sha256, width, height, fetched_at, record FROM fetched").fetchall()
        wanted = None if image_ids is None else set(image_ids)
        return {r[0]: {"path": r[1], "sha256": r[2], "width": r[3], "height": r[4], "fetched_at": r[5],
                       "record": json.loads(r[6])}
                for r in rows if wanted is None or r[0] in wanted}

    def images_table(self, image_ids: Iterable[str], chunk_rows: int = 5_000) -> pa.Table:
        """The fetched images among ``image_ids`` in the ``images`` contract (an Arrow table, sorted by id).

        Read from SQLite in chunks that are converted to Arrow one at a time, so the Python
        objects of at most ``chunk_rows`` images exist at once.
        """
        self.flush()
        db = self._connect()
        tables = []
        with _using(db):
            db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (image_id TEXT PRIMARY KEY)")
            db.execute("DELETE FROM wanted")
            db.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", ((str(i),) for i in image_ids))
            cursor = db.execute(_IMAGES_SQL)
            names = [d[0] for d in cursor.description]
            while rows := cursor.fetchmany(chunk_rows):
                chunk = pd.DataFrame.from_records(rows, columns=names)
                chunk["is_pano"] = chunk["is_pano"].astype("boolean")
                tables.append(conform(chunk, IMAGES, what=f"fetched images in {self.path.name}"))
            db.execute("DELETE FROM wanted")
        return pa.concat_tables(tables) if tables else IMAGES.empty_table()

    def fetched_one(self, image_id: str) -> dict[str, Any] | None:
        """The fetched entry of one image (committed or pending in this thread), or None."""
        for p in self._pending():
            if p[0] == image_id:
                return {"path": p[1], "sha256": p[2], "width": p[3], "height": p[4], "fetched_at": p[5],
                        "record": json.loads(p[6])}
        with _using(self._connect()) as db:
            r = db.execute("SELECT image_id, path, sha256, width, height, fetched_at, record FROM fetched "
                           "WHERE image_id=?", (image_id,)).fetchone()
        return None if r is None else {"path": r[1], "sha256": r[2], "width": r[3], "height": r[4],
                                       "fetched_at": r[5], "record": json.loads(r[6])}

    def record_fetched(self, image_id: str, path: str, sha256: str, width: int, height: int,
                       record: dict[str, Any]) -> None:
        """Record one fetched image (and clear an earlier failure of it); committed in batches of ``BATCH``.

        Batching is safe against ``kill -9``: a file renamed into place whose entry was not yet
        committed is verified and adopted by the next run. Call ``flush`` when a batch of work ends.
        """
        pending = self._pending()
        pending.append((image_id, path, sha256, width, height, _now(), _json(record)))
        if len(pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        """Commit this thread's pending fetched entries."""
        pending = self._pending()
        if not pending:
            return
        with _using(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO fetched VALUES (?, ?, ?, ?, ?, ?, ?)", pending)
            db.executemany("DELETE FROM failed WHERE image_id=?", [(p[0],) for p in pending])
            db.execute("COMMIT")
        pending.clear()

    def _pending(self) -> list[tuple]:
        if getattr(self._local, "pending", None) is None:
            self._local.pending = []
        return self._local.pending

    def forget_fetched(self, image_id: str) -> None:
        """Drop a fetched entry whose file went missing or changed."""
        self.flush()
        self._write("DELETE FROM fetched WHERE image_id=?", [(image_id,)])

    def record_failed(self, image_id: str, stage: str, reason: str) -> None:
        """Commit one failure (the latest reason wins); failed images are tried again on the next run."""
        self.flush()
        self._write("INSERT OR REPLACE INTO failed VALUES (?, ?, ?, ?)", [(image_id, stage, reason, _now())])

    def failed(self) -> dict[str, tuple[str, str]]:
        """Failures by id: (stage, reason)."""
        with _using(self._connect()) as db:
            return {r[0]: (r[1], r[2]) for r in db.execute("SELECT image_id, stage, reason FROM failed")}

    def counts(self) -> dict[str, int]:
        """Numbers of discovered tiles, discovered images, fetched and failed images."""
        self.flush()
        with _using(self._connect()) as db:
            return {name: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 - fixed names
                    for name, table in (("tiles", "tiles"), ("discovered", "discovered"), ("fetched", "fetched"),
                                        ("failed", "failed"))}
