"""Start-up and fixed cost of a run: imports, Prefect server, decode workers, shutdown.

    .venv/bin/python benchmarks/startup.py            # everything below, once
    .venv/bin/python benchmarks/startup.py --only run --repeats 3 --reuse-server

Parts (each in fresh processes, so nothing is warm from an earlier part):

- ``imports``: wall seconds of ``import flows.cli`` (what the command needs before it checks its
  options), ``import flows.city_audit`` (the flow: Prefect, pandas, geopandas, DuckDB; what the
  first stage waits for besides the server) and ``import classify.stage`` (torch, open_clip: what
  the run imports in the background for its model stages, ``flows.cli.preload``), and the biggest
  packages under ``python -X importtime`` for the flow and its model stages together;
- ``server``: seconds from launching the run's own Prefect API server (``flows.server``) to its
  first healthy answer, and to its stop;
- ``decode``: classifying ``--images`` copies of the sample's JPEGs with the tiny backbone, decoded
  inline, in threads (the default) and in DataLoader worker processes (forkserver), each in a
  fresh process: set-up and classification seconds, and the ratio to threads;
- ``run``: ``city-audit run --source sample --model tiny`` on the 19-image sample into a fresh
  ``--out``: seconds from the command to the flow's first stage, to the flow's end and to the
  process's exit, the stage seconds from ``run.json``, and the fixed cost (everything that is
  not a stage; also counted with ``load_backbone``, since that stage waits for the torch import the
  run starts in the background).

It prints the machine's load average before each part: on a shared machine it explains the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SAMPLE_BBOX = "9.16,48.76,9.18,48.78"


def _env(api_url: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PREFECT_API_URL", None)  # measure the run's own server unless told otherwise
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def _timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_imports(repeats: int) -> None:
    print(f"\n## imports ({_load()})")
    for module in ("flows.cli", "flows.city_audit", "classify.stage"):
        times = [_timed([PY, "-c", f"import {module}"]) for _ in range(repeats)]
        print(f"import {module:17} {statistics.median(times):6.2f} s wall (min {min(times):.2f}, {repeats} runs, "
              "includes the interpreter's start)")
    out = subprocess.run([PY, "-X", "importtime", "-c", "import flows.city_audit, classify.stage"], env=_env(),
                         cwd=ROOT, capture_output=True, text=True, check=True).stderr
    packages: dict[str, float] = {}
    for line in out.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| *(\S+)", line)
        if m and "." not in m.group(3):  # a package's own cumulative time, wherever it was first imported
            packages[m.group(3)] = max(packages.get(m.group(3), 0.0), int(m.group(2)) / 1e6)
    print("largest packages (cumulative, first import) under -X importtime (inflated by its own overhead):")
    for name, seconds in sorted(packages.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {seconds:6.2f} s  {name}")


def bench_server(repeats: int) -> None:
    print(f"\n## Prefect API server of our own ({_load()})")
    code = ("import time,json; t=time.perf_counter(); from flows.server import OwnedServer; s=OwnedServer(); s.start();"
            "ok=s.wait(180); up=time.perf_counter()-t; t2=time.perf_counter(); s.stop();"
            "print(json.dumps({'ok': ok, 'up_s': up, 'stop_s': time.perf_counter()-t2}))")
    for _ in range(repeats):
        result = json.loads(subprocess.run([PY, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True,
                                           check=True).stdout.strip().splitlines()[-1])
        print(f"healthy after {result['up_s']:.2f} s (ok={result['ok']}), stopped in {result['stop_s']:.2f} s")


DECODE_PROBE = """
import json, os, sys, time
def main():
    t0 = time.perf_counter()
    mode, n = sys.argv[1], int(sys.argv[2])
    os.environ["CITY_AUDIT_DECODE"] = mode
    import pandas as pd
    from classify.backbone import load_backbone
    from classify.heads import zero_shot_heads
    from classify.predict import predict_attributes
    from geo.imagery import SAMPLE_AREA
    meta = pd.read_parquet(SAMPLE_AREA / "images.parquet")
    files = [str(SAMPLE_AREA / p) for p in meta["path"]]
    files = (files * (n // len(files) + 1))[:n]
    backbone = load_backbone("tiny", device="cpu")
    heads = zero_shot_heads(backbone)
    t1 = time.perf_counter()
    result = predict_attributes(pd.DataFrame({"image_id": [str(i) for i in range(n)], "file": files}), backbone,
                                heads, progress=False)
    t2 = time.perf_counter()
    print(json.dumps({"setup_s": t1 - t0, "classify_s": t2 - t1, "rows": result.predictions.num_rows}))
if __name__ == "__main__":
    main()
"""


def bench_decode(repeats: int, n_images: int) -> None:
    print(f"\n## decode {n_images} images, tiny backbone, CPU ({_load()})")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "decode_probe.py"
        probe.write_text(DECODE_PROBE)
        results: dict[str, list[dict]] = {"inline": [], "threads": [], "processes": []}
        for _ in range(repeats):  # interleaved: load on a shared machine hits every mode alike
            for mode in results:
                out = subprocess.run([PY, str(probe), mode, str(n_images)], env=_env(), cwd=ROOT,
                                     capture_output=True, text=True, check=True).stdout
                results[mode].append(json.loads(out.strip().splitlines()[-1]))
    threads = statistics.median(r["classify_s"] for r in results["threads"])
    for mode, runs in results.items():
        classify_s = statistics.median(r["classify_s"] for r in runs)
        assert all(r["rows"] == n_images * 8 for r in runs), f"{mode}: prediction rows missing"
        print(f"{mode:9} classify {classify_s:6.2f} s (min {min(r['classify_s'] for r in runs):.2f}), "
              f"set-up {statistics.median(r['setup_s'] for r in runs):5.2f} s, {classify_s / threads:4.2f}x threads")


FIRST_STAGE = re.compile(r"Task run 'prepare image store")
FLOW_END = re.compile(r"Flow run '.*' - Finished in state")


def bench_run(repeats: int, reuse_server: bool = False) -> None:
    server = None
    if reuse_server:  # a server the user keeps running: the run only checks its health
        sys.path.insert(0, str(ROOT))
        from flows.server import OwnedServer

        server = OwnedServer()
        server.start()
        assert server.wait(300), server.last_line()
    how = "with a running server (PREFECT_API_URL)" if server else "starting its own server"
    print(f"\n## city-audit run --source sample --model tiny (19 images), {how} ({_load()})")
    try:
        _runs(repeats, server.api_url if server else None)
    finally:
        if server:
            server.stop()


def _runs(repeats: int, api_url: str | None) -> None:
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            start = time.perf_counter()
            proc = subprocess.Popen([PY, "-m", "flows.cli", "run", "--bbox", SAMPLE_BBOX, "--source", "sample",
                                     "--model", "tiny", "--out", str(out)], env=_env(api_url), cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            first = end = None
            for line in proc.stdout:
                now = time.perf_counter() - start
                if first is None and FIRST_STAGE.search(line):
                    first = now
                if FLOW_END.search(line):
                    end = now
            code = proc.wait()
            total = time.perf_counter() - start
            if code != 0 or first is None or end is None:
                print(f"run failed (exit {code})")
                continue
            stages = json.loads((out / "run.json").read_text())["timings_s"]
            in_stages = sum(stages.values())
            print(f"first stage after {first:5.2f} s, flow done {end:6.2f} s, exit {total:6.2f} s; stages "
                  f"{in_stages:5.2f} s ({', '.join(f'{k} {v:.1f}' for k, v in stages.items())}); "
                  f"fixed cost {total - in_stages:5.2f} s ({total - in_stages + stages.get('load_backbone', 0):5.2f} s "
                  f"with load_backbone, which waits for the background import of torch), shutdown {total - end:4.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["imports", "server", "decode", "run"], action="append")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--images", type=int, default=128, help="images for the decode part (default 128)")
    parser.add_argument("--reuse-server", action="store_true", help="run part: also time runs against a "
                        "Prefect server started beforehand (PREFECT_API_URL), as a user who keeps one running")
    args = parser.parse_args()
    parts = args.only or ["imports", "server", "decode", "run"]
    print(f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    if "imports" in parts:
        bench_imports(args.repeats)
    if "server" in parts:
        bench_server(args.repeats)
    if "decode" in parts:
        bench_decode(args.repeats, args.images)
    if "run" in parts:
        bench_run(args.repeats)
        if args.reuse_server:
            bench_run(args.repeats, reuse_server=True)


if __name__ == "__main__":
    main()
