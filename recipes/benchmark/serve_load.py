"""HTTP serving under load (issue 13): ``lightning-adapters serve`` against one `transformers` pipeline per adapter.

    python recipes/benchmark/serve_load.py                       # 16 clients, 2,000 requests, K = 3 adapters
    python recipes/benchmark/serve_load.py --requests 600        # what the committed results ran (shared 2-core CPU)

Setup: MiniLM (the ``minilm`` alias) on the CPU, K adapters (LoRA r=8, default targets, weights randomised) each
with its own `ClassificationHead` (3, 10, 5, 7 labels), exported with `save_adapter` into a temporary folder. The
load: ``--clients`` threads send ``--requests`` requests in all, each ``POST /predict`` with one sentence of the
bundled ``tasks/finance_sentiment/sample/test.csv`` and an adapter drawn at random (seeded), as fast as answers come
back (closed loop). Latency is per request, as the client sees it (connect, send, wait, read).

The two servers, each in its own fresh process group, are started one after the other, then
loaded in turn: ``--rounds`` rounds (default 4), the order alternating, each round ``requests / rounds`` requests,
the idle server paused (SIGSTOP) — so load from other work on a shared machine falls on both alike:

- ``lightning-adapters serve``: one worker holding the base once and the K adapters on it; LitServe gathers
  concurrent requests into dynamic batches (``--max-batch-size``, ``--batch-timeout``), answered per adapter; torch
  threads: its default (``--threads``: the cores divided among the worker and the HTTP process, 1 on 2 cores).
- naive: what serving K fine-tuned models usually looks like without adapters — one process holding one
  ``transformers.pipeline("text-classification")`` per adapter (K full copies of MiniLM with a classification head
  of that adapter's label count: ``AutoModelForSequenceClassification``, random head, the same compute per request as
  an adapted model; its answers are not ours), behind the standard library's ``ThreadingHTTPServer``: each request
  runs its adapter's pipeline on its one text at once, in its own thread (no batching across requests); torch
  threads: torch's default (every core; 1 thread measured the same here).

Figures: requests/s (requests / wall time of the load), p50 and p99 latency, failed requests (non-200 or error: must
be 0), and the memory of each server's process tree after start-up (model weights; LitServe's HTTP process
included; proportional set sizes, so pages shared between processes count once). Outputs:
``recipes/benchmark/results/serve_load/{results.json,results.md}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from lightning_adapters import AdapterModule, ClassificationHead, Lora, save_adapter
from lightning_adapters.backbone import resolve

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

BENCHMARK = "serve_load"
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tasks" / "finance_sentiment" / "sample" / "test.csv"
ADAPTERS = [("sentiment", 3), ("topic", 10), ("emotion", 5), ("intent", 7)]
OURS, NAIVE = "lightning-adapters serve (1 base + K adapters, dynamic batching)", "naive: K transformers pipelines"


def make_adapters(folder: Path, count: int) -> dict[str, str]:
    """K LoRA adapters of MiniLM with random weights, exported; ``{name: folder}``."""
    generator = torch.Generator().manual_seed(0)
    folders = {}
    for name, labels in ADAPTERS[:count]:
        module = AdapterModule("minilm", strategy=Lora(r=8), head=ClassificationHead(),
                               label_names=[f"{name}_{i}" for i in range(labels)])
        with torch.no_grad():
            for _, param in module.trainable_parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
        folders[name] = str(save_adapter(module, folder / name))
    return folders


# ---- the naive server (this script, run with --naive-server) ------------------------------------------------------
def naive_server(port: int, adapters: list[str]) -> None:
    path = resolve("minilm").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    pipes = {}
    for name in adapters:
        labels = dict(ADAPTERS)[name]
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=labels).eval()
        pipes[name] = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu", top_k=None)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 — http.server's naming
            self.reply(200, "ok")

        def do_POST(self):  # noqa: N802
            try:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                scores = pipes[request["adapter"]](request["text"])[0]
                best = max(scores, key=lambda score: score["score"])
                self.reply(200, {"predictions": [{"label": best["label"], "probabilities": {
                    score["label"]: score["score"] for score in scores}}]})
            except (KeyError, ValueError) as err:
                self.reply(422, {"error": str(err)})

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default backlog (5) refuses connections from 16 clients at once

    Server(("127.0.0.1", port), Handler).serve_forever()


# ---- load ---------------------------------------------------------------------------------------------------------
def post(port: int, body: dict) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return -1


def load(port: int, bodies: list[dict], clients: int) -> tuple[list[float], int, float]:
    """Send ``bodies`` from ``clients`` threads, closed loop: (latencies in s, failed requests, wall time in s)."""
    latencies, failures, lock = [], [0], threading.Lock()

    def one(body: dict) -> None:
        start = time.perf_counter()
        status = post(port, body)
        with lock:
            latencies.append(time.perf_counter() - start)
            failures[0] += status != 200

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, bodies))
    return latencies, failures[0], time.perf_counter() - start


def figures(latencies: list[float], failed: int, wall: float) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return {"requests/s": len(latencies) / wall, "p50 latency": 1000 * statistics.median(latencies),
            "p99 latency": 1000 * cuts[98], "failed requests": failed}


def start(command: list[str], port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)  # its own process group: `stop` ends its workers too
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop(process)
            raise SystemExit(f"server exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        time.sleep(0.5)
    stop(process)
    raise SystemExit(f"server not ready in 300 s: {log.read_text()[-2000:]}")


def tree_pss_mib(process: subprocess.Popen) -> float:
    """Memory of ``process`` and its descendants (LitServe's HTTP and worker processes): their proportional set
    sizes (Linux ``smaps_rollup``), so pages a forked process shares with its parent count once, not twice."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {process.pid}, True
    while grew:
        grown = tree | {pid for pid, parent in parents.items() if parent in tree}
        grew, tree = grown != tree, grown
    total = 0
    for pid in tree:
        try:
            total += next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                          if line.startswith("Pss:"))
        except (OSError, StopIteration):
            continue
    return total / 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(servers: dict[str, tuple[subprocess.Popen, int]], bodies: list[dict], args) -> dict[str, dict]:
    """Both servers loaded in turn over ``--rounds`` rounds (order alternating), the idle one paused (SIGSTOP: an
    idle LitServe worker polls its queue), so that other work on a shared machine falls on both alike; each
    server's figures pool its rounds."""
    pooled = {name: ([], 0, 0.0) for name in servers}
    for process, port in servers.values():
        os.killpg(process.pid, signal.SIGCONT)
        load(port, bodies[: args.clients * 4], args.clients)  # warm-up: first batches, lazy initialisation
        os.killpg(process.pid, signal.SIGSTOP)
    share = len(bodies) // args.rounds
    for number in range(args.rounds):
        for name in list(servers)[:: 1 if number % 2 == 0 else -1]:
            process, port = servers[name]
            os.killpg(process.pid, signal.SIGCONT)
            latencies, failed, wall = load(port, bodies[number * share:(number + 1) * share], args.clients)
            os.killpg(process.pid, signal.SIGSTOP)
            done = pooled[name]
            pooled[name] = (done[0] + latencies, done[1] + failed, done[2] + wall)
    for process, _ in servers.values():
        os.killpg(process.pid, signal.SIGCONT)
    return {name: figures(*pooled[name]) for name in servers}


def stop(process: subprocess.Popen) -> None:
    """Kill the server's process group: killing its main process alone leaves LitServe's workers running (and
    taking CPU from the next measurement)."""
    try:
        os.killpg(process.pid, signal.SIGCONT)  # a paused group still dies on SIGKILL; resumed, it reaps cleanly
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is gone already
        pass
    process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=3, choices=(2, 3, 4))
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved load rounds per server")
    parser.add_argument("--out", type=Path, default=_report.default_out(BENCHMARK))
    parser.add_argument("--naive-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--names", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _report.setup_runtime(torch.get_num_threads())
    if args.naive_server:
        naive_server(args.naive_server, args.names)
        return
    texts = [row["sentence"] for row in csv.DictReader(open(SAMPLE))]
    names = [name for name, _ in ADAPTERS[: args.adapters]]
    chance = random.Random(0)
    bodies = [{"adapter": chance.choice(names), "text": chance.choice(texts)} for _ in range(args.requests)]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(Path(tmp), args.adapters)
        commands = {OURS: [sys.executable, "-m", "lightning_adapters.cli", "serve", "--max-batch-size",
                           str(args.max_batch_size), "--batch-timeout", str(args.batch_timeout), "--adapters",
                           *(f"{n}={f}" for n, f in folders.items()), "--port"],
                    NAIVE: [sys.executable, __file__, "--names", *names, "--naive-server"]}
        servers, memory = {}, {}
        try:
            for name, command in commands.items():  # one at a time: start-up is not measured under the other
                port = free_port()
                servers[name] = (start([*command, str(port)], port, Path(tmp) / f"{len(servers)}.log"), port)
                memory[name] = tree_pss_mib(servers[name][0])
                os.killpg(servers[name][0].pid, signal.SIGSTOP)
            results = measure(servers, bodies, args)
        finally:
            for process, _ in servers.values():
                stop(process)
    ours, naive = ({**results[name], "server memory (PSS)": memory[name]} for name in (OURS, NAIVE))
    for name, found in ((OURS, ours), (NAIVE, naive)):
        print(f"{name}: " + ", ".join(f"{key} {value:.1f}" for key, value in found.items()), flush=True)
    write(args, ours, naive)


def write(args, ours: dict[str, float], naive: dict[str, float]) -> None:
    load_avg = os.getloadavg()[0]
    setup = (f"minilm, K={args.adapters} LoRA r=8 classification adapters, {args.clients} concurrent clients, "
             f"{args.requests} requests of one sentence each (adapter drawn at random) in {args.rounds} interleaved "
             "rounds, max batch "
             f"{args.max_batch_size}, batch timeout {args.batch_timeout}s, 1 worker (its default torch threads), "
             f"{_report.hardware()}, "
             f"1-min load average {load_avg:.1f} at end, {_report.versions()}")
    units = {"requests/s": "1/s", "p50 latency": "ms", "p99 latency": "ms", "failed requests": "requests",
             "server memory (PSS)": "MiB"}
    records = [_report.record(BENCHMARK, "HTTP classification, mixed adapters", method, metric,
                              round(found[metric], 2), unit, setup)
               for method, found in ((OURS, ours), (NAIVE, naive)) for metric, unit in units.items()]
    _report.write_json(args.out, records)
    rows = [[method, f"{f['requests/s']:.1f}", f"{f['p50 latency']:.0f}", f"{f['p99 latency']:.0f}",
             int(f["failed requests"]), f"{f['server memory (PSS)']:.0f}"] for method, f in ((OURS, ours),
                                                                                            (NAIVE, naive))]
    table = _report.markdown_table(["server", "requests/s", "p50 ms", "p99 ms", "failed", "memory MiB"], rows)
    checks = [_report.check_line("no failed request", ours["failed requests"] == 0 == naive["failed requests"],
                                 f"{int(ours['failed requests'])} and {int(naive['failed requests'])}")]
    (args.out / "results.md").write_text(f"# HTTP serving under load\n\n{setup}\n\n{table}\n\n" + "\n".join(checks)
                                         + "\n")
    print(table)


if __name__ == "__main__":
    main()
