"""Load test of ``dermkit serve`` on loopback: requests/s and latency, batching on vs off (printed).

    .venv/bin/python benchmarks/serve_load.py [--model runs/benchmark/model] [--clients 16]
        [--seconds 20] [--max-batch 16] [--data ham10000] [--images 32] [--explain-n 20]

For each setting the script starts ``dermkit serve`` as its own process on a free loopback port
(``--max-batch 1`` = batching off, ``--max-batch N`` = on), waits for ``/health``, then runs
``--clients`` concurrent clients (threads, one ``httpx.Client`` each) that POST real test images
of ``--data`` to ``/api/predict`` back to back for ``--seconds`` seconds. It prints requests/s,
p50/p95/p99 latency (client side, upload to answer), the error count and the mean batch size
the server reported. Then, with one client and batching on, the p95 latency of a single
prediction with and without ``?explain=1`` (Grad-CAM) over ``--explain-n`` requests each.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "dermkit", "serve", "--model", model, "--port", str(port), "--max-batch",
           str(max_batch), "--max-queue", "512", "--timeout", "120", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dermkit serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("dermkit serve did not start within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def load(url: str, images: list[bytes], clients: int, seconds: float, explain: bool = False) -> dict:
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            i = k
            while time.perf_counter() < stop_at:
                data = images[i % len(images)]
                i += clients
                started = time.perf_counter()
                try:
                    r = http.post(url + "/api/predict" + ("?explain=1" if explain else ""),
                                  files={"image": ("lesion.jpg", data, "image/jpeg")})
                    ok = r.status_code == 200
                    size = r.json().get("batch_size", 1) if ok else 0
                except httpx.HTTPError:
                    ok, size = False, 0
                elapsed = time.perf_counter() - started
                with lock:
                    if ok:
                        latencies.append(elapsed)
                        batch_sizes.append(size)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"requests": len(latencies), "rps": len(latencies) / wall, "p50": np.percentile(lat, 50),
            "p95": np.percentile(lat, 95), "p99": np.percentile(lat, 99), "errors": errors[0],
            "mean_batch": float(np.mean(batch_sizes)) if batch_sizes else float("nan")}


def sequential(url: str, images: list[bytes], n: int, explain: bool) -> np.ndarray:
    import httpx

    out = []
    with httpx.Client(timeout=120) as http:
        for i in range(n + 2):
            started = time.perf_counter()
            r = http.post(url + "/api/predict" + ("?explain=1" if explain else ""),
                          files={"image": ("lesion.jpg", images[i % len(images)], "image/jpeg")})
            r.raise_for_status()
            if i >= 2:  # the first calls build the Grad-CAM hooks and warm the caches
                out.append((time.perf_counter() - started) * 1000)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/benchmark/model", help="model folder to serve")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-batch", type=int, default=16, help="batch size limit when batching is on")
    parser.add_argument("--data", default="ham10000", help="dataset whose test images are sent")
    parser.add_argument("--images", type=int, default=32, help="distinct images sent in turn")
    parser.add_argument("--explain-n", type=int, default=20, help="requests per single-prediction timing")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    args = parser.parse_args()

    from dermkit.data import load_card

    card = load_card(args.data)
    rows = card.rows("test").head(args.images)
    images = [Path(card.image_path(p)).read_bytes() for p in rows["image"]]
    print(f"model {args.model}; {len(images)} {card.name} test images; {args.clients} clients x {args.seconds:g} s; "
          f"{os.cpu_count()} CPUs")
    print(f"{'setting':<26}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'mean batch':>12}")
    results = {}
    for label, max_batch in ((f"batching on (max {args.max_batch})", args.max_batch), ("batching off", 1)):
        proc, url = start_server(args.model, max_batch, args.threads)
        try:
            load(url, images, args.clients, min(3.0, args.seconds))  # warm-up
            r = results[label] = load(url, images, args.clients, args.seconds)
            print(f"{label:<26}{r['rps']:>8.1f}{r['p50']:>9.0f}{r['p95']:>9.0f}{r['p99']:>9.0f}{r['errors']:>8d}"
                  f"{r['mean_batch']:>12.2f}")
            if max_batch > 1:
                plain = sequential(url, images, args.explain_n, explain=False)
                explained = sequential(url, images, args.explain_n, explain=True)
        finally:
            stop_server(proc)
    on, off = results[f"batching on (max {args.max_batch})"], results["batching off"]
    print(f"throughput ratio on/off: {on['rps'] / off['rps']:.2f}x")
    print(f"one prediction, one client: p95 {np.percentile(plain, 95):.0f} ms (p50 {np.median(plain):.0f}); "
          f"with explain=1: p95 {np.percentile(explained, 95):.0f} ms (p50 {np.median(explained):.0f})")


if __name__ == "__main__":
    main()
