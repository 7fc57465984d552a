"""Serving under load: a local-provider endpoint of the bundled GPT, driven by a local client.

    python bench/serving/bench.py                        # CPU: gpt-tiny on 2 local nodes
    python bench/serving/bench.py --requests 2000        # the full run
    python bench/serving/bench.py --gpu                  # GPU: gpt-125m, fp16, one GPU node

The endpoint is what ``gpubroker submit`` makes of a serving spec on the local provider:
the nodes boot the generated script, the broker submits the Serve run as a Ray job, and
the replicas answer ``POST /generate`` on the head. The client sends ``--requests``
requests at each concurrency (threads, keep-alive connections) and reports latency
percentiles, requests/s, generated tokens/s and errors; then the same at ``--loss-concurrency``
while one of the two nodes is taken away a third of the way through. The client shares the
machine with the endpoint, so on a small machine the figures are a floor.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GPUBROKER = str(Path(sys.executable).with_name("gpubroker"))
PROMPT = "The fleet is planned as a whole, not one job at a time. "


def _spec(gpu: bool, nodes: int) -> dict[str, Any]:
    model = "gpt-125m" if gpu else "gpt-tiny"
    return {
        "kind": "inference",
        "name": f"bench-{model}",
        "model": model,
        "precision": "fp16" if gpu else "fp32",
        "request_rate": 20,
        "input_tokens": 64,
        "output_tokens": 16,
        "slo": {"ttft_ms": 2000, "tpot_ms": 200},
        "min_replicas": nodes,
        "max_batch_size": 16,
        "constraints": {"providers": ["local"]},
    }


class Client:
    """Sends requests over one keep-alive connection per thread."""

    def __init__(self, host: str, port: int, max_tokens: int) -> None:
        self.host, self.port, self.max_tokens = host, port, max_tokens
        self.local = threading.local()

    def ask(self) -> tuple[float, int, bool]:
        """(seconds, tokens generated, ok) of one request."""
        body = json.dumps({"prompt": PROMPT, "max_tokens": self.max_tokens})
        started = time.perf_counter()
        try:
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                self.local.conn = conn
            conn.request("POST", "/generate", body, {"content-type": "application/json"})
            answer = conn.getresponse()
            data = answer.read()
            ok = answer.status == 200
            tokens = json.loads(data)["tokens"] if ok else 0
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            self.local.conn = None
            ok, tokens = False, 0
        return time.perf_counter() - started, tokens, ok


def load(client: Client, requests: int, concurrency: int, during: Any = None) -> dict[str, Any]:
    """``requests`` requests from ``concurrency`` threads; ``during(done)`` is called as
    requests complete (the loss phase takes a node away from it)."""
    lock = threading.Lock()
    results: list[tuple[float, int, bool]] = []
    left = [requests]

    def worker() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            result = client.ask()
            with lock:
                results.append(result)
                done = len(results)
            if during is not None:
                during(done)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    good = sorted(seconds for seconds, _, ok in results if ok)
    cuts = statistics.quantiles(good, n=100) if len(good) >= 2 else [good[0] if good else 0.0] * 99
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": sum(1 for _, _, ok in results if not ok),
        "p50_ms": cuts[49] * 1000,
        "p95_ms": cuts[94] * 1000,
        "p99_ms": cuts[98] * 1000,
        "req_per_s": len(good) / wall,
        "tokens_per_s": sum(tokens for _, tokens, _ in results) / wall,
    }


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([GPUBROKER, *args], env=env, capture_output=True, text=True, check=True)
    return done.stdout


def _wait_ready(env: dict[str, str], submit: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and submit.poll() is None:
        rows = json.loads(_cli(env, "endpoints", "--format", "json"))
        if rows and rows[0]["state"] == "READY":
            return rows[0]
        time.sleep(1.0)
    tail = " | ".join(log.read_text().splitlines()[-3:])
    raise SystemExit(f"the endpoint did not become READY: {tail}")


def _lose_worker(env: dict[str, str]) -> None:
    from broker.config import load_settings
    from providers.base import TAG_NODE
    from providers.local import LocalProvider

    settings = load_settings(env)
    local = LocalProvider(settings, nodes=settings.local_nodes)
    listed = local.list_instances(settings.owner_tag)
    local.preempt(next(r for r in listed if r.tags.get(TAG_NODE) == "1").instance_id)


def _cell(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _table(rows: list[dict[str, Any]]) -> str:
    columns = [
        "phase",
        "concurrency",
        "requests",
        "errors",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "req_per_s",
        "tokens_per_s",
    ]
    cells = [[r["phase"], *(_cell(r[c]) for c in columns[1:])] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--loss-concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--gpu", action="store_true", help="gpt-125m in fp16 on a GPU node")
    parser.add_argument("--port", type=int, default=8031)
    args = parser.parse_args()

    import yaml

    home = Path(tempfile.mkdtemp(prefix="gpubroker-serving-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUBROKER_", "RAY_"))}
    env.update(
        GPUBROKER_HOME=str(home),
        GPUBROKER_SERVE_PORT=str(args.port),
        GPUBROKER_LOCAL_NODES="2",
        GPUBROKER_RAY_PORT="6520",
    )
    spec_path = home / "serve.yaml"
    spec_path.write_text(yaml.safe_dump(_spec(args.gpu, 2)))
    started = time.monotonic()
    _cli(env, "db", "upgrade")  # before the client and the submit open it at once
    log = home / "submit.log"
    submit = subprocess.Popen(
        [GPUBROKER, "submit", str(spec_path), "--wait"],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    rows: list[dict[str, Any]] = []
    try:
        endpoint = _wait_ready(env, submit, log)
        waited = time.monotonic() - started
        replicas = endpoint["replicas"]
        print(f"endpoint {endpoint['url']} READY after {waited:.0f} s ({replicas} replicas)")
        sys.stdout.flush()
        client = Client("127.0.0.2", args.port, args.max_tokens)
        load(client, 20, 4)  # warm the replicas up
        for concurrency in args.concurrency:
            rows.append({"phase": "steady", **load(client, args.requests, concurrency)})
            print(_table(rows[-1:]).splitlines()[-1], flush=True)
        lost = threading.Event()

        def take_a_node(done: int) -> None:
            if done >= args.requests // 3 and not lost.is_set():
                lost.set()
                threading.Thread(target=_lose_worker, args=(env,)).start()

        loss = load(client, args.requests, args.loss_concurrency, take_a_node)
        rows.append({"phase": "loss 1 of 2", **loss})
        final = json.loads(_cli(env, "endpoints", "--format", "json"))
    finally:
        job = json.loads(_cli(env, "jobs", "--format", "json"))
        if job and job[0]["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            _cli(env, "cancel", str(job[0]["id"]))
        elif job:
            print(f"the serving job ended {job[0]['state']}: {job[0]['message']}")
        submit.wait(timeout=180)
    print()
    print(_table(rows))
    if final:
        e = final[0]
        print(
            f"\nendpoint after the loss: {e['state']}, {e['replicas']} replicas, "
            f"{e['requests']} requests counted, peak {e['request_rate']} req/s"
        )


if __name__ == "__main__":
    main()
