"""The one step that does not scale out: loading every chunk's predictions into the run database.

Writes synthetic chunk files (the predictions contract: 8 rows per image with their probability
maps, 2048 images per file) for two image counts, then times the warehouse's own load
(``warehouse/sql/load_predictions.sql`` into the table of ``contracts/sql/schema.sql``, then
``warehouse.build.check_unique_keys``, which checks that no prediction is duplicated) in a fresh DuckDB file each, with the
given threads and memory limit. Prints seconds, rows/s, peak RSS and the ratios between the
sizes, so the row count where the merge stops being "a minute" can be read off.

    .venv/bin/python benchmarks/merge.py --images 100000 400000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHUNK = 2048

SYNTHETIC_CHUNK = """
COPY (
    SELECT printf('%09d', $first + i) AS image_id, a.attribute, 'clear' AS label, 0.5::FLOAT AS confidence,
           MAP {'clear': 0.5::FLOAT, 'cloudy': 0.3::FLOAT, 'rainy': 0.1::FLOAT, 'snowy': 0.05::FLOAT,
                'foggy': 0.05::FLOAT} AS probabilities,
           'zeroshot' AS method, 'tiny:cddf98a3954f+zeroshot:09837c68' AS model_id
    FROM range($n) t(i),
         (VALUES ('weather'), ('lighting_condition'), ('glare'), ('reflection'), ('quality'),
                 ('view_direction'), ('platform'), ('pano_status')) a(attribute)
) TO '{path}' (FORMAT parquet)
"""


def _prepare(root: Path, images: int) -> list[str]:
    import duckdb

    files = []
    with duckdb.connect() as con:
        for index, first in enumerate(range(0, images, CHUNK)):
            path = root / f"chunk-{index:05d}.parquet"
            if not path.is_file():
                con.execute(SYNTHETIC_CHUNK.replace("{path}", str(path)),
                            {"first": first, "n": min(CHUNK, images - first)})
            files.append(str(path))
    return files


def _measure(root: Path, images: int, threads: int, memory_limit: str) -> dict:
    from contracts.tables import ddl
    from warehouse.build import check_unique_keys
    from warehouse.db import connect, sql

    files = [str(root / f"chunk-{i:05d}.parquet") for i in range((images + CHUNK - 1) // CHUNK)]
    with tempfile.TemporaryDirectory(dir=root) as tmp, connect(Path(tmp) / "audit.duckdb") as con:
        con.execute(f"SET threads = {int(threads)}; SET memory_limit = '{memory_limit}'")
        con.execute(ddl())
        start, cpu = time.perf_counter(), time.process_time()
        con.execute(sql("load_predictions"), {"files": files, "run_id": "benchmark"})
        check_unique_keys(con, ["predictions"])
        con.execute("CHECKPOINT")
        seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
        rows = con.execute("SELECT count(*) FROM predictions").fetchone()[0]
    assert rows == images * 8
    return {"images": images, "rows": rows, "files": len(files), "seconds": seconds, "cpu_s": cpu_s,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs=2, default=[100_000, 400_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GB")
    args = parser.parse_args()
    args.images = [-(-n // CHUNK) * CHUNK for n in args.images]  # whole chunks, so both sizes share the files
    with tempfile.TemporaryDirectory(prefix="merge-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        _prepare(root, max(args.images))
        print(f"wrote {max(args.images)} images' synthetic chunk files in {time.perf_counter() - start:.0f} s")
        results = []
        for n in args.images:
            out = subprocess.run([sys.executable, __file__, "--_measure", str(root), str(n),
                                  "--threads", str(args.threads), "--memory-limit", args.memory_limit],
                                 capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"measuring {n} images failed:\n{out.stderr}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{r['images']:>9} images = {r['rows']:>10} prediction rows in {r['files']:>4} files: "
                  f"{r['seconds']:6.1f} s wall, {r['cpu_s']:6.1f} s CPU, {r['rows'] / r['seconds']:9.0f} rows/s, "
                  f"peak RSS {r['peak_mib']:6.0f} MiB")
        small, large = results
        print(f"ratio {large['images'] / small['images']:.0f}x the images: {large['seconds'] / small['seconds']:.2f}x "
              f"the time, {large['peak_mib'] / small['peak_mib']:.2f}x the peak RSS (threads={args.threads}, "
              f"memory_limit={args.memory_limit})")


if __name__ == "__main__":
    if "--_measure" in sys.argv:
        i = sys.argv.index("--_measure")
        root, n = sys.argv[i + 1:i + 3]
        rest = argparse.ArgumentParser()
        rest.add_argument("--threads", type=int, default=2)
        rest.add_argument("--memory-limit", default="2GB")
        extra = rest.parse_args(sys.argv[i + 3:])
        print(json.dumps(_measure(Path(root), int(n), extra.threads, extra.memory_limit)))
    else:
        main()
