"""Redaction by pattern: the token is removed in any encoding and when cut short, from messages, logs and rows."""

from __future__ import annotations

import json
import logging
import re

import pytest

from geo.mapillary import MapillaryError, MapillarySource
from geo.mapillary.errors import RedactingFilter, redact, remember_token
from tests.fake_mapillary.fixtures import FAST, TOKEN, city, city_bbox, fake, mly_env  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(60)
SECRET_TOKEN = "MLY|7777|Ab12Cd34Ef56Gh78Ij90"
SECRET = SECRET_TOKEN.split("|")[-1]


@pytest.fixture(autouse=True)
def known():
    remember_token(SECRET_TOKEN)


def runs_of(secret: str, text: str, n: int = 8) -> list[str]:
    """Every run of ``n`` consecutive secret characters in ``text``."""
    return [secret[i:i + n] for i in range(len(secret) - n + 1) if secret[i:i + n] in text]


def percent(text: str, upper: bool) -> str:
    return "".join(f"%{ord(c):02X}" if upper else f"%{ord(c):02x}" for c in text)


@pytest.mark.parametrize("written", [
    SECRET_TOKEN,
    SECRET_TOKEN.replace("|", "%7C"),
    SECRET_TOKEN.replace("|", "%7c"),
    percent(SECRET_TOKEN, upper=True),  # every character encoded
    percent(SECRET_TOKEN, upper=False),
    SECRET_TOKEN.replace("|", "%257C"),  # encoded twice
    json.dumps(SECRET_TOKEN.replace("|", "\u007c"), ensure_ascii=True),
    SECRET_TOKEN.replace("|", "\\u007c").replace("A", "\\u0041"),  # JSON escapes, lower-case hex
    SECRET_TOKEN.replace("|", "&#124;"),  # HTML character references
    SECRET_TOKEN.replace("|", "&#x7C;"),
    "".join(c if i % 2 else f"%{ord(c):02x}" for i, c in enumerate(SECRET_TOKEN)),  # a mix
])
def test_the_token_is_removed_in_any_encoding(written):
    cleaned = redact(f"upstream said: {written} (end)")
    assert cleaned.startswith("upstream said: ") and cleaned.endswith(" (end)")
    decoded = re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), cleaned)
    assert not runs_of(SECRET, decoded) and "7777" not in decoded


@pytest.mark.parametrize("cut", [
    SECRET_TOKEN[:12],  # MLY|7777|Ab1: the app-id prefix and a few characters
    "MLY|7777",
    SECRET[:8],
    SECRET[5:15],
    SECRET[-9:],
    "MLY%7C7777%7CAb12",
])
def test_a_token_cut_short_is_removed_too(cut):
    cleaned = redact(f"token starts {cut}...")
    assert "7777" not in cleaned and not runs_of(SECRET, cleaned)
    assert cleaned.startswith("token starts ")


def test_short_runs_and_other_text_are_left_alone():
    text = "image 9100000000001 at 13.4,52.5: truncated download (Ab12Cd3 is only 7 characters)"
    assert redact(text) == text


def test_query_and_header_forms_are_removed_without_knowing_the_token():
    text = ("GET /x?access_token=MLY|1|unknown-one&b=1 /y?access_token%3DMLY%7C2%7Cother Authorization: "
            "OAuth MLY|3|third Bearer MLY|4|fourth")
    cleaned = redact(text)
    assert not any(s in cleaned for s in ("unknown-one", "other", "third", "fourth"))


def test_errors_and_log_records_are_redacted():
    error = MapillaryError(f"failed on https://h/?t={SECRET_TOKEN.replace('|', '%7c')} cut {SECRET[:10]}")
    assert not runs_of(SECRET, str(error)) and "7777" not in str(error)
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, "answer %s", (json.dumps({"m": SECRET_TOKEN}),),
                               None)
    RedactingFilter().filter(record)
    assert not runs_of(SECRET, record.getMessage())


def test_an_error_body_echoing_the_token_leaves_no_trace_in_the_failures(tmp_path, city, mly_env):
    mly_env.inject("entity", "echo_token", count=10_000)
    result = MapillarySource({**FAST, "max_retries": 0}).ingest(city_bbox(city), tmp_path / "images",
                                                                 tmp_path / "m.sqlite", progress=False)
    assert len(result.failures) == len(city.images)
    assert "Invalid parameter" in result.failures["reason"].iloc[0]  # the message itself is kept
    secret = TOKEN.split("|")[-1]
    dumped = result.failures.to_json() + json.dumps(result.counts)
    plain = re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), dumped)
    assert not runs_of(secret, plain) and "MLY|4242" not in plain
