"""Download thumbnails into the image store: fresh URLs, verified bytes, atomic files, a manifest entry each.

For each image: ask the entity endpoint for its metadata and a fresh ``thumb_<size>_url`` (the
signed URLs expire, so they are never cached), download the bytes, check that their length
matches ``Content-Length`` and that they decode completely as an image, write them to a
temporary name, rename, and record the file's sha256 in the manifest. Truncated or corrupt
bytes and expired URLs are retried with a fresh URL up to ``download_attempts`` times; then
the image is recorded as failed with the reason. ``InvalidTokenError`` stops everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any, Iterable

from PIL import Image
from tqdm.auto import tqdm

from geo.mapillary.client import MapillaryClient, UnusableAnswer
from geo.mapillary.errors import CorruptImageError, ExpiredURLError, InvalidTokenError, MapillaryError, describe
from geo.mapillary.manifest import Manifest
from geo.mapillary.options import MapillaryOptions
from geo.mapillary.records import ENTITY_FIELDS, graph_record, merge

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
PARTIAL_SUFFIX = ".partial"


def store_name(image_id: str) -> str:
    """The file name of an image in the store (``<id>.jpg``; unusual ids are hashed)."""
    stem = image_id if _SAFE_ID.match(image_id) else hashlib.sha256(image_id.encode()).hexdigest()[:32]
    return f"{stem}.jpg"


def remove_partials(store: Path) -> int:
    """Delete temporary files left by an interrupted run; returns how many there were."""
    count = 0
    for partial in Path(store).glob(f".*{PARTIAL_SUFFIX}"):
        partial.unlink(missing_ok=True)
        count += 1
    return count


def check_image(data: bytes, expected_length: int | None = None) -> tuple[int, int]:
    """Width and height of an image given as bytes; raises ``CorruptImageError`` if truncated or undecodable."""
    if expected_length is not None and len(data) != expected_length:
        raise CorruptImageError(f"truncated download: {len(data)} of {expected_length} bytes")
    if not data:
        raise CorruptImageError("empty download")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a full decode: truncated JPEGs fail here
            return image.size
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        raise CorruptImageError(f"truncated or corrupt image ({type(exc).__name__}: {exc})") from None


def write_atomically(data: bytes, final: Path) -> str:
    """Write ``data`` to a temporary name beside ``final``, rename it into place; returns the sha256."""
    partial = final.with_name(f".{final.name}{PARTIAL_SUFFIX}")
    with partial.open("wb") as fh:
        fh.write(data)
    os.replace(partial, final)
    return hashlib.sha256(data).hexdigest()


def _verified_existing(final: Path, expected_sha256: str | None) -> tuple[str, int, int] | None:
    """(sha256, width, height) of a file already in the store if it is complete; None otherwise."""
    if not final.is_file():
        return None
    data = final.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha != expected_sha256:
        return None
    try:
        width, height = check_image(data)
    except CorruptImageError:
        return None
    return sha, width, height


def _same_id(image_id: str):
    """A ``check`` for ``client.graph``: the entity answered must be the one asked for."""
    def check(body: dict[str, Any]) -> None:
        answered = graph_record({"id": body.get("id")})["image_id"]
        if answered != image_id:
            raise UnusableAnswer(f"asked for image {image_id}, the answer is for {str(answered)[:40]!r}",
                                 kind="answer for another id")
    return check


async def fetch_thumbnail(client: MapillaryClient, image_id: str, options: MapillaryOptions
                          ) -> tuple[bytes, tuple[int, int], dict[str, Any]]:
    """Bytes, (width, height) and the entity record of one image, with retries for bad bytes and expired URLs.

    The length check compares ``Content-Length`` with the bytes that came over the wire (before
    ``Content-Encoding`` is decoded: a gzip-encoded JPEG is not "truncated"); then the decoded
    bytes must decode completely as an image.
    """
    fields = ",".join((*ENTITY_FIELDS, options.thumb_field))
    problems = []
    for _ in range(options.download_attempts):
        # a fresh signed URL every attempt; an answer for another id is retried, then a failure
        entity = await client.graph(image_id, {"fields": fields}, check=_same_id(image_id))
        url = entity.get(options.thumb_field)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise MapillaryError(f"image {image_id}: the entity has no usable {options.thumb_field} "
                                 f"(got {str(url)[:60]!r}); the image may be private or deleted",
                                 kind="no thumbnail url")
        try:
            answer = await client.thumbnail(url)
        except ExpiredURLError as exc:
            problems.append(str(exc))
            continue
        length = answer.headers.get("Content-Length", "").strip()
        try:
            if length.isdigit() and answer.raw_bytes != int(length):
                raise CorruptImageError(f"truncated download: {answer.raw_bytes} of {length} bytes")
            size = await asyncio.to_thread(check_image, answer.content)
        except CorruptImageError as exc:
            problems.append(str(exc))
            continue
        return answer.content, size, graph_record(entity)
    kind = "url expired" if problems and all("expired" in p for p in problems) else "corrupt image"
    raise CorruptImageError(f"image {image_id}: no good thumbnail after {options.download_attempts} attempts "
                            f"({'; '.join(problems)})", kind=kind)


async def download_images(client: MapillaryClient, candidates: Iterable[dict[str, Any]], store: Path,
                          manifest: Manifest, options: MapillaryOptions, *, total: int | None = None,
                          progress: bool = False, label: str = "mapillary") -> tuple[int, list[tuple[str, str, str]]]:
    """Make every candidate record present in ``store`` and in ``manifest``; returns (images present, failures).

    Already fetched and still intact files are kept; a file renamed into place by a run that
    was killed before recording it is verified and adopted. ``options.concurrency`` workers pull
    from the candidates (an iterable, consumed lazily), and what was fetched goes to the
    manifest on disk, not to a list: memory does not grow with the number of images. Read the
    table of images with ``Manifest.images_frame``.
    """
    store.mkdir(parents=True, exist_ok=True)
    present = 0
    failures: list[tuple[str, str, str]] = []
    queue = iter(candidates)
    bar = tqdm(total=total, desc=f"downloading {label}", unit="img", disable=not progress, leave=False)

    async def one(candidate: dict[str, Any]) -> None:
        nonlocal present
        image_id = candidate["image_id"]
        name = store_name(image_id)
        final = store / name
        entry = manifest.fetched_one(image_id)
        existing = await asyncio.to_thread(_verified_existing, final, entry["sha256"] if entry else None)
        if existing is not None:
            sha, width, height = existing
            record = merge(candidate, entry["record"]) if entry else candidate
            if entry is None:  # renamed by a run killed before it could record the file
                manifest.record_fetched(image_id, name, sha, width, height, record)
            present += 1
            return
        if entry is not None:
            manifest.forget_fetched(image_id)
        try:
            data, (width, height), entity = await fetch_thumbnail(client, image_id, options)
        except InvalidTokenError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded per image; the run goes on
            reason = describe(exc)
            manifest.record_failed(image_id, "mapillary download", reason)
            failures.append((image_id, "mapillary download", reason))
            return
        record = merge(candidate, entity)
        sha = await asyncio.to_thread(write_atomically, data, final)
        manifest.record_fetched(image_id, name, sha, width, height, record)
        present += 1

    async def worker() -> None:
        for candidate in queue:
            try:
                await one(candidate)
            finally:
                bar.update(1)

    try:
        await asyncio.gather(*(worker() for _ in range(options.concurrency)))
    finally:
        manifest.flush()
        bar.close()
    return present, failures
