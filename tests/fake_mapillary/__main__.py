"""Run the fake Mapillary server on its own (for benchmarks and manual runs); prints its URL, serves until killed.

    python -m tests.fake_mapillary --streets 20 --spacing-m 2 --latency-ms 50 --token MLY|bench|token
"""

from __future__ import annotations

import argparse
import threading

from tests.fake_mapillary import FakeMapillary, recorded_images, synthetic_city


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_mapillary")
    parser.add_argument("--streets", type=int, default=3, help="streets per direction in the synthetic city")
    parser.add_argument("--half-size-m", type=float, default=300.0)
    parser.add_argument("--spacing-m", type=float, default=20.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--token", default="MLY|fake|secret-token-for-tests")
    args = parser.parse_args()
    city = synthetic_city(args.streets, args.half_size_m, args.spacing_m)
    server = FakeMapillary(city.images + recorded_images(), token=args.token, latency_s=args.latency_ms / 1000)
    server.start()
    west, south, east, north = city.bbox
    print(f"{server.url} {west},{south},{east},{north} {len(city.images)}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
