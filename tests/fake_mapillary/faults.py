"""Hostile answers of the fake server: bodies that arrive but cannot be used, or arrive too slowly.

``FakeMapillary.inject(endpoint, kind, count, **params)`` with one of ``HOSTILE`` (the classic
faults, 429/500/drop/..., live in ``server.py``):

- ``error_body``: HTTP 200 with a Graph error JSON (``code``, default 100) instead of data
- ``invalid_token_200``: HTTP 200 with the real error-190 body (any endpoint)
- ``empty``: HTTP 200 with 0 bytes (a tile that is no "no coverage": that is 204/404)
- ``garbage``: HTTP 200 with bytes that are neither MVT, JSON nor an image
- ``html``: HTTP 200 with an HTML error page
- ``trickle``: the normal answer, one byte every ``delay_s`` seconds
- ``gzip``: the normal answer gzip-encoded, ``Content-Length`` of the compressed bytes
- ``no_data``: a search answer without a ``data`` list
- ``wrong_id``: an entity answer for another image id
- ``no_geometry`` / ``bad_coords`` / ``outside`` / ``no_id`` / ``not_object``: a search answer
  whose first result lost its geometry, has coordinates out of range, lies far outside the box
  asked, has no id, or is joined by a result that is not an object
- ``seconds``: a search or entity answer with ``captured_at`` in epoch seconds, not milliseconds
- ``bad_feature``: a tile whose first image feature has no id, and one more that is a line
- ``redirect_loop``: HTTP 302 back to the same URL, for ever
- ``echo_token``: HTTP 400 whose error message echoes the token percent-encoded (lower case),
  JSON-escaped, HTML-escaped and cut short
"""

from __future__ import annotations

import gzip
import json
import time

import mapbox_vector_tile
import mercantile

HOSTILE = ("error_body", "invalid_token_200", "empty", "garbage", "html", "trickle", "gzip", "no_data", "wrong_id",
           "no_geometry", "bad_coords", "outside", "no_id", "not_object", "seconds", "bad_feature", "echo_token",
           "redirect_loop")
GARBAGE = b"\x00\xff\xfe garbage that is not a tile, not JSON and not an image \x13\x37" * 3
HTML = b"<html><head><title>502 Bad Gateway</title></head><body>upstream error</body></html>"


def _normal(fake, endpoint: str, segments: list[str], query: dict[str, str]) -> tuple[int, bytes, str]:
    if endpoint == "search":
        return (*fake.search(query), "application/json")
    if endpoint == "entity":
        return (*fake.entity(segments[0], query), "application/json")
    if endpoint == "tiles":
        layer, z, x, y = segments[2], *(int(v) for v in segments[4:7])
        return (*fake.tile(layer, z, x, y), "application/x-protobuf")
    return (*fake.thumbnail(segments[1], segments[2].split(".")[0], query), "image/jpeg")


def _mangle_search(body: bytes, kind: str) -> bytes:
    answer = json.loads(body)
    data = answer.get("data") or []
    if kind == "not_object":
        data.append("not an object")
    elif data:
        first = data[0]
        if kind == "no_geometry":
            first.pop("geometry", None), first.pop("computed_geometry", None)
        elif kind == "bad_coords":
            first["geometry"] = {"type": "Point", "coordinates": [200.0, 95.0]}
            first.pop("computed_geometry", None)
        elif kind == "outside":
            for key in ("geometry", "computed_geometry"):
                if key in first:
                    first[key] = {"type": "Point", "coordinates": [-70.0, -40.0]}
        elif kind == "no_id":
            first.pop("id", None)
    return json.dumps(answer).encode()


def _seconds(body: bytes) -> bytes:
    answer = json.loads(body)
    for item in answer.get("data", [answer]):
        if isinstance(item, dict) and isinstance(item.get("captured_at"), (int, float)):
            item["captured_at"] = item["captured_at"] // 1000
    return json.dumps(answer).encode()


def _bad_feature_tile(fake, segments: list[str]) -> bytes:
    layer, z, x, y = segments[2], *(int(v) for v in segments[4:7])
    tile = mercantile.Tile(x, y, z)
    status, body = fake.tile(layer, z, x, y)
    layers = mapbox_vector_tile.decode(body) if body else {}
    features = []
    left, bottom, right, top = mercantile.xy_bounds(tile)
    extent = 4096
    for i, feature in enumerate((layers.get("image") or {}).get("features", [])):
        px, py = feature["geometry"]["coordinates"]
        mx, my = left + px * (right - left) / extent, bottom + py * (top - bottom) / extent
        properties = dict(feature["properties"])
        if i == 0:
            properties.pop("id", None)
        features.append({"geometry": f"POINT({mx} {my})", "properties": properties})
    features.append({"geometry": f"LINESTRING({left} {bottom}, {right} {top})", "properties": {"id": 4242424242}})
    return mapbox_vector_tile.encode([{"name": "image", "features": features}],
                                     default_options={"quantize_bounds": (left, bottom, right, top), "extents": extent})


def hostile(handler, fake, endpoint: str, fault, segments: list[str], query: dict[str, str]) -> None:
    """Answer one request with the hostile ``fault`` (``fault.kind`` in ``HOSTILE``)."""
    kind = fault.kind
    if kind == "error_body":
        error = {"error": {"message": "Unsupported get request", "type": "GraphMethodException", "code": fault.code}}
        handler._send(200, json.dumps(error).encode())
    elif kind == "invalid_token_200":
        from tests.fake_mapillary.server import INVALID_TOKEN_BODY

        handler._send(200, INVALID_TOKEN_BODY)
    elif kind == "empty":
        handler._send(200, b"", "application/x-protobuf" if endpoint == "tiles" else "application/json")
    elif kind == "garbage":
        handler._send(200, GARBAGE, "application/x-protobuf" if endpoint == "tiles" else "application/json")
    elif kind == "html":
        handler._send(200, HTML, "text/html")
    elif kind == "no_data":
        handler._send(200, json.dumps({"paging": {}}).encode())
    elif kind == "wrong_id":
        other = next(i for i in fake.images if i != segments[0])
        status, body = fake.entity(other, query)
        handler._send(status, body)
    elif kind == "redirect_loop":
        handler._send(302, b"", "text/plain", headers={"Location": handler.path})
    elif kind == "echo_token":
        token = fake.token
        lower = "".join(f"%{ord(c):02x}" if not c.isalnum() else c for c in token)
        escaped = token.replace("|", "\\u007C")
        html = token.replace("|", "&#124;")
        message = (f"Invalid parameter: token {lower} (as JSON {escaped}, as HTML {html}); "
                   f"cut short: {token[:14]}... and ...{token[-10:]}")
        error = {"error": {"message": message, "type": "OAuthException", "code": 100}}
        handler._send(400, json.dumps(error).encode())
    elif kind == "bad_feature":
        handler._send(200, _bad_feature_tile(fake, segments), "application/x-protobuf")
    else:
        status, body, content_type = _normal(fake, endpoint, segments, query)
        if status != 200:
            handler._send(status, body, "text/plain")
        elif kind in ("no_geometry", "bad_coords", "outside", "no_id", "not_object"):
            handler._send(200, _mangle_search(body, kind))
        elif kind == "seconds":
            handler._send(200, _seconds(body))
        elif kind == "gzip":
            handler._send(200, gzip.compress(body), content_type, headers={"Content-Encoding": "gzip"})
        elif kind == "trickle":
            handler.send_response(200)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            for i in range(len(body)):
                handler.wfile.write(body[i:i + 1])
                handler.wfile.flush()
                time.sleep(fault.delay_s)
        else:
            raise ValueError(f"unknown hostile fault {kind!r}")
