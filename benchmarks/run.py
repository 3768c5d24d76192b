"""Run the whole benchmark: every server, closed loop at each concurrency, the mixed workload.

    python -m benchmarks.run            # full run: 3 servers, concurrency 1 4 8 16, mixed (~30 min)
    python -m benchmarks.run --quick    # quantserve vs llama-server, concurrency 8, mixed (~2-3 min)
    python -m benchmarks.run --vllm     # serve up --backend vllm vs vLLM's own server, 1 8 32 streams

Writes benchmarks/results/<name>.json and <name>.png and prints the tables and the targets.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from benchmarks import loadgen, peers, report
from benchmarks.machine import ForeignLoad, describe_machine, wait_for_quiet
from benchmarks.prompts import eos_logit_bias, long_prompt, short_prompts

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOG_DIR = peers.CACHE_DIR / "logs"
WARMUP_FIRST_INDEX = 500_000
MIXED_FIRST_INDEX = 900_000
MIXED_NUM_STREAMS = 8
MIXED_STREAM_TOKENS = 128


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="quantserve and llama-server only, concurrency 8, 2 requests per client, mixed")
    parser.add_argument("--vllm", action="store_true",
                        help="the vLLM pair instead: quantserve-vllm and vllm on the SmolLM2 Hugging Face copy "
                             "(tests/vllm_model.py), concurrency 1,8,32, 32 sequences, no mixed workload")
    parser.add_argument("--servers", help="comma-separated subset of: "
                                          f"{','.join(peers.SERVER_NAMES + peers.VLLM_SERVER_NAMES)}")
    parser.add_argument("--concurrency", help="comma-separated closed-loop concurrencies (default 1,4,8,16)")
    parser.add_argument("--requests-per-client", type=int, default=None,
                        help="requests per client at each concurrency (default 4; --quick: 2)")
    parser.add_argument("--min-requests", type=int, default=8, help="at least this many requests per level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed workload")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of every workload on every server, interleaved; the median is reported "
                             "(default 3; --quick: 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=None,
                        help="slots: quantserve --parallel, llama-server -np (default 8; --vllm: 32)")
    parser.add_argument("--ctx", type=int, default=None, help="context per sequence (default 4096; --vllm: 1024)")
    parser.add_argument("--model-path", help="GGUF to serve (default: the embedded SmolLM2-135M Q4_1)")
    parser.add_argument("--name", help="results file stem (default: 'full' or 'quick')")
    parser.add_argument("--max-foreign-cpu", type=float, default=0.10,
                        help="rerun a workload when other processes used more than this share of all cores")
    parser.add_argument("--max-attempts", type=int, default=3, help="runs of one workload at most")
    parser.add_argument("--quiet-wait-s", type=float, default=120.0,
                        help="before a rerun and at start, wait up to this long for the machine to be idle")
    args = parser.parse_args(argv)
    default_servers = "quantserve,llama-server" if args.quick else ",".join(peers.SERVER_NAMES)
    default_concurrency = "8" if args.quick else "1,4,8,16"
    if args.vllm:
        default_servers, default_concurrency = ",".join(peers.VLLM_SERVER_NAMES), "8" if args.quick else "1,8,32"
        args.no_mixed = True
    args.parallel = args.parallel or (32 if args.vllm else 8)
    args.ctx = args.ctx or (1024 if args.vllm else 4096)
    args.servers = [s.strip() for s in (args.servers or default_servers).split(",") if s.strip()]
    unknown = [s for s in args.servers if peers.base_name(s) not in peers.SERVER_NAMES + peers.VLLM_SERVER_NAMES]
    if unknown:
        parser.error(f"unknown server(s) {unknown}; known: {', '.join(peers.SERVER_NAMES + peers.VLLM_SERVER_NAMES)}")
    args.concurrency = [int(c) for c in (args.concurrency or default_concurrency).split(",") if c]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.requests_per_client is None:
        args.requests_per_client = 2 if args.quick else 4
    args.name = args.name or ("vllm" if args.vllm else "full") + ("-quick" if args.quick else "")
    if args.name == "full-quick":
        args.name = "quick"
    if args.model_path is None:  # with --vllm: the tokenizer the prompts are counted with
        from serve.models.catalog import embedded_model_path
        args.model_path = str(embedded_model_path())
    args.hf_model_dir = ""
    if args.vllm:
        from tests.vllm_model import hf_smollm2_dir  # the same SmolLM2, as vLLM reads it
        args.hf_model_dir = str(hf_smollm2_dir())
    return args


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


async def _check_eos_suppressed(base_url: str, model: str, model_path: str, max_tokens: int) -> dict[str, Any]:
    """One non-streaming request: usage must show exactly max_tokens (EOS banned through logit_bias)."""
    spec = short_prompts(model_path, WARMUP_FIRST_INDEX, 1, max_tokens)[0]
    payload = {**loadgen.completion_payload(model, spec), "stream": False}
    payload.pop("stream_options")
    async with httpx.AsyncClient(timeout=600.0) as client:
        response = await client.post(f"{base_url}/v1/completions", json=payload)
        response.raise_for_status()
        usage = response.json().get("usage") or {}
    return {"completion_tokens": usage.get("completion_tokens"),
            "ok": usage.get("completion_tokens") == max_tokens}


async def _warm_up(base_url: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    check = await _check_eos_suppressed(base_url, model, args.model_path, args.max_tokens)
    specs = short_prompts(args.model_path, WARMUP_FIRST_INDEX + 1, args.parallel, 16)
    await loadgen.run_closed_loop(base_url, model, specs, args.parallel)
    return check


def cpu_cost(server_cpu_s: float, summary: dict[str, Any]) -> dict[str, float]:
    """The server's CPU seconds (its process tree) during a run, and per 1,000 output tokens."""
    tokens = summary.get("total_output_tokens") or 0
    return {"server_cpu_s": round(server_cpu_s, 3),
            "cpu_s_per_1k_tokens": round(1000 * server_cpu_s / tokens, 3) if tokens else float("nan")}


async def _closed_loop_phase(servers: dict[str, peers.RunningServer], args: argparse.Namespace,
                             document: dict[str, Any]) -> None:
    """Every concurrency level on every server (see interleaved_runs)."""
    models = {}
    for name, server in servers.items():
        models[name] = await loadgen.first_model_id(server.base_url)
        document["servers"][name] = {"command": server.command, "model_id": models[name],
                                     "eos_check": await _warm_up(server.base_url, models[name], args),
                                     "closed_loop": []}
    for level_index, concurrency in enumerate(args.concurrency):
        num_requests = max(args.min_requests, args.requests_per_client * concurrency)

        def workload(name: str, repeat: int, concurrency=concurrency, num_requests=num_requests):
            return _closed_loop_workload(servers[name].base_url, models[name], concurrency, num_requests,
                                         repeat, args)

        def describe(run: dict[str, Any], concurrency=concurrency) -> str:
            return f"c={concurrency}: {run['output_throughput']:.1f} tok/s, p99 TTFT {run['p99_ttft_ms']:.0f} ms"

        medians = await interleaved_runs(servers, workload, describe, args, first_shift=level_index)
        for name, median in medians.items():
            document["servers"][name]["closed_loop"].append(
                {"concurrency": concurrency, "num_requests": num_requests * args.repeats, **median})


async def interleaved_runs(servers: dict[str, peers.RunningServer], workload, describe,
                            args: argparse.Namespace, first_shift: int = 0) -> dict[str, dict[str, Any]]:
    """Run `workload(name, repeat)` --repeats times on every server, servers interleaved and their order
    rotated every repeat, so that load from other processes hits them alike; the median of each server's
    runs (loadgen.median_of_runs)."""
    names = list(servers)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        shift = (first_shift + repeat) % len(names)
        for name in names[shift:] + names[:shift]:
            run = await measure(servers[name], workload(name, repeat), args)
            log(f"{name} run {repeat + 1}/{args.repeats}, {describe(run)}, "
                 f"other processes {run['foreign_cpu_share']:.0%} CPU")
            runs[name].append(run)
    return {name: loadgen.median_of_runs(runs[name]) for name in names}


def _closed_loop_workload(base_url: str, model: str, concurrency: int, num_requests: int, repeat: int,
                          args: argparse.Namespace):
    async def workload(attempt: int) -> dict[str, Any]:
        # Every run and rerun gets new prompts: earlier ones would now hit the prefix cache.
        first_index = 1_000_000 * (repeat + 1) + 10_000 * concurrency + 1_000 * attempt
        specs = short_prompts(args.model_path, first_index, num_requests, args.max_tokens)
        results, duration = await loadgen.run_closed_loop(base_url, model, specs, concurrency)
        return loadgen.summarize(results, duration)

    return workload


async def measure(server: peers.RunningServer, workload, args: argparse.Namespace) -> dict[str, Any]:
    """Run `workload` (returns a summary); when other processes used more than --max-foreign-cpu of the
    machine meanwhile, wait for quiet and run it again, keeping the least disturbed attempt."""
    best: dict[str, Any] = {}
    for attempt in range(1, args.max_attempts + 1):
        load_before = load_average()
        with ForeignLoad(server.process.pid) as foreign:
            summary = await workload(attempt)
        measured = {"load_before": load_before, "load_after": load_average(),
                    "foreign_cpu_share": round(foreign.share, 3), **summary, **cpu_cost(foreign.server_cpu_s, summary)}
        if not best or foreign.share < best["foreign_cpu_share"]:
            best = measured
        if foreign.share <= args.max_foreign_cpu or attempt == args.max_attempts:
            break
        log(f"{server.name}: other processes used {foreign.share:.0%} of the CPU; waiting for quiet, retrying")
        await asyncio.to_thread(wait_for_quiet, args.quiet_wait_s)
    return {**best, "num_attempts": attempt}


async def _mixed_phase(servers: dict[str, peers.RunningServer], args: argparse.Namespace,
                       document: dict[str, Any]) -> None:
    models = {}
    for name, server in servers.items():
        models[name] = await loadgen.first_model_id(server.base_url)
        await _warm_up(server.base_url, models[name], args)

    def workload(name: str, repeat: int):
        return _mixed_workload(servers[name].base_url, models[name], repeat, args)

    def describe(run: dict[str, Any]) -> str:
        return f"mixed: max ITL {run['streams_max_itl_ms']:.0f} ms, {run['output_throughput']:.1f} tok/s"

    medians = await interleaved_runs(servers, workload, describe, args)
    for name, median in medians.items():
        document["servers"].setdefault(name, {})["mixed"] = {"command": servers[name].command, **median}


def _mixed_workload(base_url: str, model: str, repeat: int, args: argparse.Namespace):
    async def workload(attempt: int) -> dict[str, Any]:
        # Every run and rerun gets new prompts: earlier ones would now hit the prefix cache.
        variant = 10 * (repeat + 1) + attempt
        streams = short_prompts(args.model_path, MIXED_FIRST_INDEX + 1_000 * variant,
                                MIXED_NUM_STREAMS, MIXED_STREAM_TOKENS)
        long_spec = long_prompt(args.model_path, 1500, args.max_tokens, variant=variant)
        return loadgen.summarize_mixed(*await loadgen.run_mixed(base_url, model, streams, long_spec))

    return workload


def start_all(names: list[str], settings: peers.ServerSettings) -> dict[str, peers.RunningServer]:
    """Start every server; idle servers use no CPU (measured: < 0.5%), so they can wait side by side."""
    servers: dict[str, peers.RunningServer] = {}
    try:
        for name in names:
            servers[name] = peers.start_server(name, settings, LOG_DIR / f"parallel{settings.num_parallel}")
    except BaseException:
        stop_all(servers)
        raise
    return servers


def stop_all(servers: dict[str, peers.RunningServer]) -> None:
    for server in servers.values():
        server.stop()


def run_phase(phase, names: list[str], settings: peers.ServerSettings, args: argparse.Namespace,
               document: dict[str, Any]) -> None:
    busy = wait_for_quiet(args.quiet_wait_s)
    if busy > 0.08:
        log(f"the machine is still {busy:.0%} busy with other work; measuring anyway (see 'other CPU')")
    servers = start_all(names, settings)
    try:
        asyncio.run(phase(servers, args, document))
    finally:
        stop_all(servers)
    document["load_average_at_end"] = load_average()
    write_results(document, args.name)  # partial results survive a later failure


def write_results(document: dict[str, Any], name: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    binary = peers.build_llama_server() if any(peers.base_name(s) == "llama-server" for s in args.servers) else None
    settings = peers.ServerSettings(args.model_path, args.threads, args.parallel, args.ctx,
                                    hf_model_dir=args.hf_model_dir)
    document: dict[str, Any] = {
        "name": args.name,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"model_path": args.model_path, "hf_model_dir": args.hf_model_dir, "num_threads": args.threads, "num_parallel": args.parallel,
                     "ctx_per_sequence": args.ctx, "max_tokens": args.max_tokens,
                     "concurrency": args.concurrency, "requests_per_client": args.requests_per_client,
                     "min_requests": args.min_requests, "repeats": args.repeats,
                     "api": "/v1/completions, streaming, temperature 0",
                     "eos_logit_bias": eos_logit_bias(args.model_path)},
        "machine": describe_machine(binary),
        "servers": {},
    }
    if args.concurrency:
        run_phase(_closed_loop_phase, args.servers, settings, args, document)
    if not args.no_mixed:
        # The long prompt must find a free slot on arrival, or no server can stall the running streams:
        # llama-server and quantserve would both queue it until the 8 streams finish together.
        mixed_settings = dataclasses.replace(settings, num_parallel=max(args.parallel, MIXED_NUM_STREAMS + 1))
        document["settings"]["mixed_num_parallel"] = mixed_settings.num_parallel
        run_phase(_mixed_phase, args.servers, mixed_settings, args, document)
    document["targets"] = report.evaluate_targets(document)
    path = write_results(document, args.name)
    print(report.format_report(document))
    from benchmarks.plot import plot_results
    png = plot_results(document, RESULTS_DIR / f"{args.name}.png")
    print(f"\nresults: {path}\nplot:    {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
