"""A fake Mapillary API v4 on 127.0.0.1: Graph search and entities, coverage vector tiles, signed thumbnails.

It is a real HTTP/1.1 server (stdlib ``ThreadingHTTPServer`` in a thread) speaking the shapes of
the recorded responses in ``tests/data/mapillary``:

- ``GET /images?bbox=&fields=&limit=[&start_captured_at&end_captured_at&organization_id&is_pano]``
  (refuses boxes with a side of 0.01 degree or more, as the real API does)
- ``GET /<image_id>?fields=...`` (only the requested fields; ``thumb_<size>_url`` are signed, expiring URLs)
- ``GET /maps/vtp/<layer>/2/<z>/<x>/<y>?access_token=`` (MVT, layer ``image``; the recorded tile where one exists)
- ``GET /thumbs/<id>/<size>.jpg?exp=&sig=`` (a small JPEG; 403 once expired)

Faults on demand with ``inject(endpoint, kind, count)``: ``429`` (with ``Retry-After``), ``500``,
``query_timeout`` (400, code -2, ``is_transient: false``), ``slow``, ``timeout``, ``drop``
(connection closed), ``truncate`` (a cut JPEG with a matching length), ``cut`` (the connection
closes mid-body), ``expire`` (403 on a thumbnail URL) and ``invalid_token`` (401, code 190);
the hostile answers of ``faults.py`` (200 with an error body, empty or undecodable tiles,
trickling or gzip-encoded bodies, answers for another id, results without a position, ...).
A tile without coverage is HTTP 204, as the real tile server answers it.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import mapbox_vector_tile
import mercantile
import numpy as np
from PIL import Image

from tests.fake_mapillary.city import DATA
from tests.fake_mapillary.faults import HOSTILE, hostile

ENDPOINTS = ("search", "entity", "tiles", "thumbs")
RATE_LIMIT_BODY = (DATA / "application_request_limit_reached.json").read_bytes()
INVALID_TOKEN_BODY = (DATA / "invalid_token_190.json").read_bytes()
QUERY_TIMEOUT_BODY = json.dumps({"error": {"message": "Timeout", "type": "OAuthException", "code": -2,
                                           "error_subcode": 3404014, "is_transient": False,
                                           "error_user_title": "Query Timeout"}}).encode()
RECORDED_TILES = {("mly1_public", 14, 3252, 6258): DATA / "tiles" / "14_3252_6258.mvt"}


@dataclass
class Fault:
    kind: str
    remaining: int
    retry_after_s: float | None = 1.0
    delay_s: float = 0.0
    code: int = 100  # Graph error code of an error_body fault


def jpeg_for(image_id: str, size: str) -> bytes:
    """A small JPEG for an image id and thumbnail size (64x48 for 1024); one of 64 colours, so it is cheap."""
    return _jpeg(hashlib.sha256(image_id.encode()).digest()[0] % 64, str(size))


@lru_cache(maxsize=None)
def _jpeg(colour_index: int, size: str) -> bytes:
    width = 64 if size == "original" else max(8, int(size) // 16)
    colour = ((colour_index * 37) % 256, (colour_index * 91) % 256, (colour_index * 53) % 256)
    image = Image.new("RGB", (width, width * 3 // 4), colour)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


class FakeMapillary:
    """The server. ``url`` is its root; point ``MAPILLARY_GRAPH_URL`` and ``MAPILLARY_TILES_URL`` at it."""

    def __init__(self, images: list[dict[str, Any]], token: str = "MLY|fake|secret-token-for-tests",
                 latency_s: float = 0.0, url_ttl_s: float = 3600.0) -> None:
        self.token, self.latency_s, self.url_ttl_s = token, latency_s, url_ttl_s
        self.images = {str(image["id"]): image for image in images}
        self._ids = np.array(list(self.images), dtype=object)
        points = [self._position(self.images[i]) for i in self._ids]
        self._lon = np.array([p[0] for p in points], dtype=float)
        self._lat = np.array([p[1] for p in points], dtype=float)
        self._faults: dict[str, list[Fault]] = defaultdict(list)
        self._lock = threading.Lock()
        self._tile_cache: dict[tuple, bytes] = {}
        self.requests: Counter = Counter()  # endpoint -> requests received (any status)
        self.in_flight = 0  # requests being answered now
        self.thumbs_served: Counter = Counter()  # image_id -> complete thumbnails served
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeMapillary:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeMapillary:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def inject(self, endpoint: str, kind: str, count: int = 1, **params) -> None:
        """Answer the next ``count`` requests to ``endpoint`` (or ``"*"``) with fault ``kind``."""
        with self._lock:
            self._faults[endpoint].append(Fault(kind, count, **params))

    def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Return once no request is being answered (e.g. after killing a client mid-download)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            for key in (endpoint, "*"):
                queue = self._faults.get(key)
                while queue:
                    fault = queue[0]
                    if fault.remaining > 0:
                        fault.remaining -= 1
                        return fault
                    queue.pop(0)
        return None

    @staticmethod
    def _position(image: dict[str, Any]) -> tuple[float, float]:
        geometry = image.get("computed_geometry") or image.get("geometry")
        return tuple(geometry["coordinates"][:2])

    # answers -------------------------------------------------------------------------------------
    def search(self, query: dict[str, str]) -> tuple[int, bytes]:
        try:
            west, south, east, north = (float(v) for v in query["bbox"].split(","))
        except (KeyError, ValueError):
            return 400, json.dumps({"error": {"message": "Invalid bbox", "code": 100}}).encode()
        if east - west >= 0.01 or north - south >= 0.01:
            return 400, json.dumps({"error": {"message": "bbox must be smaller than 0.01 degrees square",
                                              "type": "MLYApiException", "code": 100}}).encode()
        limit = min(int(query.get("limit", 2000)), 2000)
        inside = (self._lon >= west) & (self._lon <= east) & (self._lat >= south) & (self._lat <= north)
        fields = query.get("fields", "id").split(",")
        data = []
        for image_id in self._ids[inside]:
            image = self.images[image_id]
            if "organization_id" in query and image.get("organization_id") != query["organization_id"]:
                continue
            if query.get("is_pano") == "true" and not image.get("is_pano"):
                continue
            if not self._in_time(image, query):
                continue
            data.append(self._fields(image, fields))
            if len(data) >= limit:
                break
        return 200, json.dumps({"data": data}).encode()

    @staticmethod
    def _in_time(image: dict[str, Any], query: dict[str, str]) -> bool:
        from datetime import datetime

        captured = image.get("captured_at")
        for key, keep in (("start_captured_at", lambda c, t: c >= t), ("end_captured_at", lambda c, t: c <= t)):
            if key in query:
                limit_ms = datetime.fromisoformat(query[key].replace("Z", "+00:00")).timestamp() * 1000
                if captured is None or not keep(captured, limit_ms):
                    return False
        return True

    def _fields(self, image: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        out = {}
        for name in fields:
            if name.startswith("thumb_") and name.endswith("_url"):
                out[name] = self.thumb_url(image["id"], name[len("thumb_"):-len("_url")])
            elif name in image and name != "organization_id":
                out[name] = image[name]
        out["id"] = str(image["id"])
        return out

    def thumb_url(self, image_id: str, size: str) -> str:
        expires = int(time.time() + self.url_ttl_s)
        signature = hashlib.sha256(f"{image_id}:{size}:{expires}".encode()).hexdigest()[:16]
        return f"{self.url}/thumbs/{image_id}/{size}.jpg?exp={expires}&sig={signature}"

    def entity(self, image_id: str, query: dict[str, str]) -> tuple[int, bytes]:
        image = self.images.get(image_id)
        if image is None:
            return 404, json.dumps({"error": {"message": f"Unsupported get request. Object with ID '{image_id}' "
                                              "does not exist", "type": "MLYApiException", "code": 100}}).encode()
        return 200, json.dumps(self._fields(image, query.get("fields", "id").split(","))).encode()

    def tile(self, layer: str, z: int, x: int, y: int) -> tuple[int, bytes]:
        key = (layer, z, x, y)
        if key in RECORDED_TILES:
            return 200, RECORDED_TILES[key].read_bytes()
        with self._lock:
            if key not in self._tile_cache:
                self._tile_cache[key] = self._encode_tile(mercantile.Tile(x, y, z), computed=layer.endswith("computed_public"))
            body = self._tile_cache[key]
            return (200, body) if body else (204, b"")

    def _encode_tile(self, tile: mercantile.Tile, computed: bool) -> bytes:
        west, south, east, north = mercantile.bounds(tile)
        margin = 1e-6  # then assign each point to exactly one tile, as a tile server does
        inside = ((self._lon >= west - margin) & (self._lon <= east + margin) & (self._lat >= south - margin)
                  & (self._lat <= north + margin))
        features = []
        for image_id in self._ids[inside]:
            image = self.images[image_id]
            geometry = image.get("computed_geometry" if computed else "geometry") or image["geometry"]
            if mercantile.tile(*geometry["coordinates"][:2], tile.z) != tile:
                continue
            x, y = mercantile.xy(*geometry["coordinates"][:2])
            properties = {"id": int(image_id), "sequence_id": image.get("sequence", ""),
                          "captured_at": image.get("captured_at", 0), "compass_angle": image.get("compass_angle", 0.0),
                          "is_pano": bool(image.get("is_pano")), "creator_id": int((image.get("creator") or {}).get("id", 0))}
            if image.get("organization_id"):
                properties["organization_id"] = int(image["organization_id"])
            features.append({"geometry": f"POINT({x} {y})", "properties": properties})
        if not features:
            return b""
        return mapbox_vector_tile.encode([{"name": "image", "features": features}],
                                         default_options={"quantize_bounds": mercantile.xy_bounds(tile), "extents": 4096})

    def thumbnail(self, image_id: str, size: str, query: dict[str, str]) -> tuple[int, bytes]:
        expected = hashlib.sha256(f"{image_id}:{size}:{query.get('exp')}".encode()).hexdigest()[:16]
        if image_id not in self.images or query.get("sig") != expected:
            return 403, b"Bad signature"
        if int(query.get("exp", 0)) < time.time():
            return 403, b"URL signature expired"
        return 200, jpeg_for(image_id, size)


def _handler(fake: FakeMapillary):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls

        def _send(self, status: int, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None, declared_length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body) if declared_length is None else declared_length))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _authorised(self, query: dict[str, str], endpoint: str) -> bool:
            header = self.headers.get("Authorization", "")
            given = query.get("access_token") or (header[len("OAuth "):] if header.startswith("OAuth ") else None)
            return endpoint == "thumbs" or given == fake.token

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            segments = [s for s in parts.path.split("/") if s]
            if segments[:2] == ["maps", "vtp"] and len(segments) == 7:
                endpoint = "tiles"
            elif segments[:1] == ["thumbs"] and len(segments) == 3:
                endpoint = "thumbs"
            elif segments == ["images"]:
                endpoint = "search"
            elif len(segments) == 1:
                endpoint = "entity"
            else:
                self._send(404, b'{"error": {"message": "unknown path", "code": 100}}')
                return
            with fake._lock:
                fake.requests[endpoint] += 1
                fake.in_flight += 1
            try:
                if fake.latency_s:
                    time.sleep(fake.latency_s)
                if self._fault(endpoint, segments, query) or not self._check_token(query, endpoint):
                    return
                self._answer(endpoint, segments, query)
            except (BrokenPipeError, ConnectionResetError, OSError):
                self.close_connection = True
            finally:
                with fake._lock:
                    fake.in_flight -= 1

        def _check_token(self, query: dict[str, str], endpoint: str) -> bool:
            if self._authorised(query, endpoint):
                return True
            self._send(401, INVALID_TOKEN_BODY)
            return False

        def _fault(self, endpoint: str, segments: list[str], query: dict[str, str]) -> bool:
            fault = fake._take_fault(endpoint)
            if fault is None:
                return False
            kind = fault.kind
            if kind in HOSTILE:
                hostile(self, fake, endpoint, fault, segments, query)
                return True
            if kind in ("slow", "timeout"):
                time.sleep(fault.delay_s)
                return False  # then answer normally (a client with a shorter timeout has given up)
            if kind == "429":
                headers = {} if fault.retry_after_s is None else {"Retry-After": f"{fault.retry_after_s:g}"}
                self._send(429, RATE_LIMIT_BODY, headers=headers)
            elif kind == "500":
                self._send(500, b"Internal Server Error", "text/plain")
            elif kind == "query_timeout":
                self._send(400, QUERY_TIMEOUT_BODY)
            elif kind == "invalid_token":
                self._send(401, INVALID_TOKEN_BODY)
            elif kind == "expire" and endpoint == "thumbs":
                self._send(403, b"URL signature expired", "text/plain")
            elif kind == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
            elif kind in ("truncate", "cut") and endpoint == "thumbs":
                image_id, size = self.path.split("/")[2], self.path.split("/")[3].split(".")[0]
                body = jpeg_for(image_id, size)
                half = body[: len(body) // 2]
                if kind == "truncate":
                    self._send(200, half, "image/jpeg")
                else:
                    self._send(200, half, "image/jpeg", declared_length=len(body))
                    self.close_connection = True
                    self.connection.shutdown(2)
            else:
                raise ValueError(f"fault {kind!r} does not apply to endpoint {endpoint!r}")
            return True

        def _answer(self, endpoint: str, segments: list[str], query: dict[str, str]) -> None:
            if endpoint == "search":
                status, body = fake.search(query)
            elif endpoint == "entity":
                status, body = fake.entity(segments[0], query)
            elif endpoint == "tiles":
                layer, z, x, y = segments[2], *(int(v) for v in segments[4:7])
                status, body = fake.tile(layer, z, x, y)
                self._send(status, body, "application/x-protobuf")
                return
            else:
                status, body = fake.thumbnail(segments[1], segments[2].split(".")[0], query)
                if status == 200:
                    self._send(status, body, "image/jpeg")
                    with fake._lock:
                        fake.thumbs_served[segments[1]] += 1
                    return
                self._send(status, body, "text/plain")
                return
            self._send(status, body)

    return Handler
