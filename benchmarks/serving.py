"""Serving throughput and latency of ``glide serve`` on the bundled cascade, with and without batching.

For 1, 4 and 16 concurrent clients, each sending generate requests back to back (one image each,
the same sampling settings, different prompts and seeds), against a real uvicorn server on a
loopback port: throughput in images per second and the p50 / p95 latency of a request. With
batching, requests that wait in the queue together are sampled as one batch; without it, one
request at a time.

Run (a few minutes on a 2-core CPU):

    OMP_NUM_THREADS=1 python benchmarks/serving.py
    python benchmarks/serving.py --clients 1 4 --steps 20 --upsample-steps 50 --json serving.json

Options: ``--clients N...``, ``--requests N`` (per concurrency level; default max(8, 2 x clients)),
``--steps`` / ``--upsample-steps`` (per request), ``--threads`` (torch), ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import httpx
import torch

from glide.serve.api import create_app
from glide.serve.background import background_server
from glide.serve.limits import Limits
from glide.serve.models import ModelRegistry

PROMPTS = ["a small red circle", "a large blue square", "a green triangle above a yellow circle",
           "a small purple star"]


def run_clients(url: str, clients: int, requests: int, body: dict) -> dict:
    """``clients`` threads share ``requests`` requests; latency per request, throughput over the whole run."""
    latencies: list[float] = []
    failures: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while True:
                with lock:
                    number = next(counter, None)
                if number is None:
                    return
                started = time.perf_counter()
                response = http.post("/v1/generate", json=dict(body, prompt=PROMPTS[number % len(PROMPTS)],
                                                               seed=number))
                elapsed = time.perf_counter() - started
                with lock:
                    (latencies if response.status_code == 200 else failures).append(
                        elapsed if response.status_code == 200 else response.status_code)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return dict(clients=clients, requests=requests, failed=len(failures), seconds=round(wall, 2),
                images_per_s=round(len(latencies) / wall, 3),
                p50_s=round(statistics.median(ordered), 3),
                p95_s=round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, help="requests per concurrency level (default max(8, 2 x clients))")
    parser.add_argument("--steps", type=int, default=10, help="base steps per request (DDPM, the bundled recipe)")
    parser.add_argument("--upsample-steps", type=int, default=20,
                        help="respaced upsampler steps (the bundled upsampler samples the last 30%%)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the tiny cascade)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = ModelRegistry.load(["bundled"])
    body = dict(num_images=1, steps=args.steps, upsample_steps=args.upsample_steps)
    results = []
    for batching in (True, False):
        limits = Limits(queue_size=max(args.clients) * 2, max_batch=max(args.clients))
        with background_server(create_app(registry, limits, batching=batching)) as url:
            run_clients(url, 1, 1, body)  # warm-up
            for clients in args.clients:
                row = dict(batching=batching, **run_clients(url, clients, args.requests or max(8, 2 * clients), body))
                results.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'batching':>8} {'clients':>7} {'requests':>8} {'images/s':>9} {'p50 s':>7} {'p95 s':>7}")
    for r in results:
        print(f"{'on' if r['batching'] else 'off':>8} {r['clients']:>7} {r['requests']:>8} {r['images_per_s']:>9.2f} "
              f"{r['p50_s']:>7.2f} {r['p95_s']:>7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(settings=vars(args), results=results), f, indent=2)


if __name__ == "__main__":
    main()
