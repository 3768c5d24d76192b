"""Two models, requests alternating A B A B at concurrency 4, against the same workload on one model.

With a memory budget that holds only one model, every alternation could force a swap (llama-swap's
thrash); quantserve's switch window groups requests by model so it swaps at most once per window.
Reports swaps (from the server's log), output tok/s, and p50/p99 TTFT for:
  one-model    all requests to A
  two-resident A and B both fit the budget (switching per request costs nothing)
  one-slot     the budget fits one model at a time (swaps needed)

    python -m benchmarks.model_switch [--requests 32] [--concurrency 4]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import make_client, stream_request, summarize
from benchmarks.machine import process_tree_cpu_seconds
from benchmarks.peers import ServerSettings, start_server
from benchmarks.prompts import short_prompts
from serve.config import PlanChoices
from serve.models.catalog import embedded_model_path, load_catalog, resolve_model
from serve.placement.hardware import probe
from serve.placement.plan import make_plan

RESULTS = Path(__file__).parent / "results"


def planned_bytes(path: Path) -> int:
    chosen = make_plan(probe(), resolve_model(str(path), load_catalog()),
                       PlanChoices(context_length=1024, num_parallel=4))
    return chosen.weights_bytes + chosen.kv_cache_bytes


async def alternate(url: str, models: list[str], specs, concurrency: int):
    """Closed loop; request i names models[i % len(models)]."""
    pending = collections.deque(enumerate(specs))
    results = [None] * len(specs)
    async with make_client(concurrency) as client:
        async def loop() -> None:
            while pending:
                index, spec = pending.popleft()
                results[index] = await stream_request(client, url, models[index % len(models)], spec)

        begin = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return results, time.perf_counter() - begin


def scenario(name: str, model_a: Path, model_b: Path, models: list[str], extra: list[str], args, folder: Path):
    settings = ServerSettings(model_path=str(model_a), num_threads=2, num_parallel=4, ctx_per_sequence=1024,
                              quantserve_args=tuple(extra))
    server = start_server("quantserve", settings, folder / name)
    swaps_before = 0
    try:
        if len(models) > 1:  # load B once before measuring, as A was loaded at start-up
            asyncio.run(alternate(server.base_url, [str(model_b)], short_prompts(str(model_a), 9000, 1, 4), 1))
        swaps_before = server.log_path.read_text().count("unloaded ")
        specs = short_prompts(str(model_a), 0, args.requests, args.max_tokens)
        names = [m if m != "B" else str(model_b) for m in models]
        cpu_before = process_tree_cpu_seconds(server.process.pid)
        results, duration = asyncio.run(alternate(server.base_url, names, specs, args.concurrency))
        cpu_s = process_tree_cpu_seconds(server.process.pid) - cpu_before
    finally:
        server.stop()
    summary = summarize(results, duration)
    summary["cpu_s_per_1k_tokens"] = 1000 * cpu_s / max(1, summary["total_output_tokens"])
    summary["swaps"] = server.log_path.read_text().count("unloaded ") - swaps_before
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--switch-window", default="2s")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="model-switch-"))
    model_a = folder / "smol-a.gguf"
    model_b = folder / "smol-b.gguf"
    shutil.copyfile(embedded_model_path(), model_a)
    shutil.copyfile(embedded_model_path(), model_b)
    one_slot = str(int(planned_bytes(model_a) * 1.5))
    rows: dict[str, Any] = {
        "one-model": scenario("one-model", model_a, model_b, ["smol-a"], [], args, folder),
        "two-resident": scenario("two-resident", model_a, model_b, ["smol-a", "B"], [], args, folder),
        "one-slot": scenario("one-slot", model_a, model_b, ["smol-a", "B"],
                             ["--max-memory", one_slot, "--switch-window", args.switch_window], args, folder),
    }
    print(f"{'scenario':14}{'swaps':>7}{'out tok/s':>11}{'CPU s/1k tok':>14}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}"
          f"{'failed':>8}")
    for name, row in rows.items():
        print(f"{name:14}{row['swaps']:>7}{row['output_throughput']:>11.1f}{row['cpu_s_per_1k_tokens']:>14.1f}"
              f"{row['p50_ttft_ms']:>13.0f}"
              f"{row['p99_ttft_ms']:>13.0f}{row['failed']:>8}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "model_switch.json"
    out.write_text(json.dumps({"settings": vars(args), "scenarios": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
