"""An output folder that is replaced as a whole or not at all, by one run at a time.

A run publishes into a staging folder inside ``--out`` (``.staging-<run_id>/``), checks what it
wrote, and only then swaps it in: the old ``run.json`` goes first (so a folder without it is
known to be incomplete), every published artefact replaces its predecessor, artefacts of the
old run that the new one did not write (``tiles/`` of a ``--tiles`` run, say) are removed, and
the new ``run.json`` lands last. A failed run removes its staging folder and leaves the previous
outputs as they were. The image store (``images/``) and the work folder (``work/``) are kept
across runs: they are what makes a rerun fast.

``claim`` takes a lock on the folder for the whole run (a second run into the same ``--out``
is refused with a clear message) and refuses a folder that holds files city-audit did not write
(one without ``run.json``) unless the user passes ``--force``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from contracts.errors import CityAuditError

if TYPE_CHECKING:  # importing the contracts' tables loads pandas; checking a folder needs none of it
    from contracts.results import RunFolder

#: Everything a run publishes at the top of ``--out``; anything else there is the user's own.
PUBLISHED = ("segments.parquet", "images.parquet", "segments.gpkg", "styles", "coverage.tif", "coverage.qml",
             "map.png", "map.html", "map_files", "report.md", "audit.duckdb", "tiles", "run.json")
KEPT = ("images", "work")  # the image store and the resume state, shared by reruns
LOCK_NAME = ".city-audit.lock"
STAGING_PREFIX = ".staging-"  # RunFolder.staging


class OutputFolderError(CityAuditError):
    """An output folder that cannot be used or written: foreign files, another run, a full disk."""


def is_run_folder(out: Path) -> bool:
    """True for a folder that city-audit wrote (it has a ``run.json``)."""
    return (out / "run.json").is_file()


def foreign_entries(out: Path) -> list[str]:
    """Names in ``out`` that no city-audit run writes (hidden files aside)."""
    if not out.is_dir():
        return []
    ours = {*PUBLISHED, *KEPT}
    return sorted(p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith("."))


def check_output_folder(out: str | os.PathLike, force: bool = False) -> Path:
    """``out`` as a folder a run may write: new, empty, an earlier run's, or anything with ``force``."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out} is a file; --out must be a folder (new or from an earlier run)")
    if not force and out.is_dir() and not is_run_folder(out):
        mine = [p.name for p in out.iterdir() if p.name in PUBLISHED]
        foreign = foreign_entries(out)
        if mine or foreign:
            shown = ", ".join((mine + foreign)[:5]) + (" ..." if len(mine + foreign) > 5 else "")
            raise OutputFolderError(f"{out} holds files city-audit did not write ({shown}) and no run.json; "
                                    f"choose a new --out, or pass --force to write there anyway")
    return out


def _alive(holder: str) -> bool:
    """Whether the pid written in a lock file (``pid N``) is a live process; True when unknown.

    The lock itself is an ``flock``: the kernel drops it when its holder dies, even by ``kill -9``,
    so a stale lock file of a dead run never blocks a rerun; the pid only explains a refusal."""
    _, _, pid = holder.partition("pid ")
    if not pid.strip().isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def claim(out: Path, force: bool = False) -> Iterator[Path]:
    """Hold ``out`` for one run: checked (``check_output_folder``), locked, stale staging folders removed."""
    out = check_output_folder(out, force)
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_NAME).open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            if not _alive(holder):  # the run died, but a process it left (an old decode worker) keeps the lock
                raise OutputFolderError(f"the city-audit run that held {out / LOCK_NAME} ({holder}) has ended, but a "
                                        f"process it left still holds the lock; end it (`fuser -k {out / LOCK_NAME}`)"
                                        f" and run again") from None
            raise OutputFolderError(f"another city-audit run ({holder}) is writing to {out}; wait for it to finish "
                                    f"or choose another --out") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        for stale in out.glob(f"{STAGING_PREFIX}*"):  # left by a run that was killed
            shutil.rmtree(stale, ignore_errors=True)
        try:
            yield out
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def staged(folder: RunFolder) -> Iterator[Path]:
    """The run's staging folder for its outputs; removed (and the old outputs kept) when the block fails.

    A full disk or another write error becomes an ``OutputFolderError`` naming the folder's disk.
    """
    staging, out = folder.staging, folder.out
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputFolderError(f"no space left on the disk holding {out} while writing the outputs ({exc}); "
                                    f"free some space and rerun: the previous outputs are unchanged") from exc
        raise OutputFolderError(f"could not write the outputs in {out}: {exc}; the previous outputs are "
                                f"unchanged") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def verify_database(database: Path, images: int, segments: int) -> None:
    """Refuse a database that lacks a contract table or holds other row counts than the run built."""
    from contracts.spatial import connect  # DuckDB only when there is a database to check
    from contracts.tables import DATABASE_TABLES

    try:
        with connect(database, read_only=True) as con:
            tables = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
            missing = sorted(set(DATABASE_TABLES) - tables)
            found = (con.execute("SELECT count(*) FROM images").fetchone()[0],
                     con.execute("SELECT count(*) FROM segments").fetchone()[0]) if not missing else None
    except Exception as exc:  # noqa: BLE001 - a database that does not open is not a result
        raise OutputFolderError(f"the new {database.name} cannot be read ({exc}); the previous outputs are "
                                f"unchanged") from exc
    if missing:
        raise OutputFolderError(f"the new {database.name} lacks tables {missing}; the previous outputs are unchanged")
    if found != (images, segments):
        raise OutputFolderError(f"the new {database.name} holds {found[0]} images and {found[1]} segments, not "
                                f"{images} and {segments}; the previous outputs are unchanged")


def swap_in(staging: Path, out: Path) -> None:
    """Replace the published outputs in ``out`` by those in ``staging`` (``run.json`` out first, in last)."""
    new = {p.name for p in staging.iterdir()}
    if "run.json" not in new:
        raise OutputFolderError(f"{staging} has no run.json: not a complete run, nothing swapped in")
    (out / "run.json").unlink(missing_ok=True)
    for name in PUBLISHED:
        if name == "run.json":
            continue
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        if name in new:
            os.replace(staging / name, target)
    os.replace(staging / "run.json", out / "run.json")
    shutil.rmtree(staging, ignore_errors=True)
