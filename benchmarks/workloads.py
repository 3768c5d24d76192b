"""The chat workloads (issue 16): repeated short prompts, a shared system prompt, multi-turn chats, and
input-grounded passages, on every server, at 1, 4, 8 and 16 clients, interleaved runs, medians.

    python -m benchmarks.workloads                 # all four workloads (about 25 min on an idle 2-core box)
    python -m benchmarks.workloads --quick         # each workload once at 4 clients, few requests (~4 min)
    python -m benchmarks.workloads --workloads grounded --concurrency 1 --spec-types ngram-simple,ngram-mod

Servers: quantserve (`serve up`) and llama-server with its default flags on every workload; on the
grounded workload also llama-server with each `--spec-types` (its best flags for copying input). Every
server gets the same GGUF, threads, --parallel slots and context per sequence. Requests are streaming
`/v1/chat/completions`, greedy, with the model's end-of-generation tokens banned. Tables print; results
go to benchmarks/results/<name>.json (default `workloads` or `workloads-quick`) and <name>.png.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

from benchmarks import chat_load, conversations, peers, run
from benchmarks.loadgen import first_model_id
from benchmarks.machine import describe_machine
from benchmarks.prompts import eos_logit_bias
from benchmarks.workloads_report import format_report, plot_workloads, with_comparisons

DEFAULT_SPEC_TYPES = "ngram-simple,ngram-map-k"
WARMUP_SEED = 7_000_000


def num_requests(workload: str, concurrency: int, quick: bool) -> int:
    """Requests per run (multiturn: conversations of 4 turns), sized so that the full set stays near
    25 minutes on 2 cores and every client has work for most of the run."""
    if workload == "multiturn":
        return max(2, concurrency)
    if workload == "grounded":
        return max(2 if quick else 4, concurrency)
    return max(4 if quick else 8, (1 if quick else 2) * concurrency)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run per workload at 4 clients, few requests")
    parser.add_argument("--workloads", default=",".join(conversations.WORKLOAD_NAMES),
                        help=f"comma-separated subset of {','.join(conversations.WORKLOAD_NAMES)}")
    parser.add_argument("--servers", default="quantserve,llama-server",
                        help="servers on every workload (names as in benchmarks.peers, variants with +)")
    parser.add_argument("--spec-types", default=DEFAULT_SPEC_TYPES,
                        help="grounded workload: also llama-server with each of these --spec-type values "
                             "('' for none); its help lists ngram-simple, ngram-map-k, ngram-map-k4v, "
                             "ngram-mod, ngram-cache")
    parser.add_argument("--concurrency", help="comma-separated clients (default 1,4,8,16; --quick: 4)")
    parser.add_argument("--repeats", type=int, help="interleaved runs per level, median reported (default 3; quick 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=16, help="slots of every server")
    parser.add_argument("--ctx", type=int, default=2048, help="context per sequence (grounded needs ~1,900)")
    parser.add_argument("--max-tokens", type=int,
                        help="output tokens of every request instead of the workloads' own (64; grounded "
                             "128-320): for validating on a busy machine, not for results")
    parser.add_argument("--model-path", help="GGUF to serve (default: the embedded SmolLM2-135M Q4_1)")
    parser.add_argument("--name", help="results file stem (default: workloads or workloads-quick)")
    parser.add_argument("--max-foreign-cpu", type=float, default=0.10)
    parser.add_argument("--max-attempts", type=int, default=2)
    parser.add_argument("--quiet-wait-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = set(args.workloads) - set(conversations.WORKLOAD_NAMES)
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}")
    args.servers = [s for s in args.servers.split(",") if s]
    args.spec_types = [t for t in args.spec_types.split(",") if t]
    args.concurrency = [int(c) for c in (args.concurrency or ("4" if args.quick else "1,4,8,16")).split(",") if c]
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.name = args.name or ("workloads-quick" if args.quick else "workloads")
    if args.model_path is None:
        from serve.models.catalog import embedded_model_path
        args.model_path = str(embedded_model_path())
    return args


def servers_for(workload: str, args: argparse.Namespace) -> list[str]:
    """Every server of --servers; on the grounded workload also llama-server with each --spec-types."""
    extra = [f"llama-server+{spec}" for spec in args.spec_types] if workload == "grounded" else []
    return args.servers + [name for name in extra if name not in args.servers]


def _run_seed(workload: str, concurrency: int, repeat: int, attempt: int) -> int:
    """Distinct for every run and rerun (a server's prefix cache must not serve an earlier run), the
    same for every server within a run (so their greedy outputs can be compared)."""
    return (conversations.WORKLOAD_NAMES.index(workload) + 1) * 1_000_000 + concurrency * 10_000 + repeat * 100 + attempt


def _workload_run(workload: str, server: peers.RunningServer, model: str, concurrency: int, repeat: int,
                  args: argparse.Namespace):
    async def one_run(attempt: int) -> dict[str, Any]:
        chats = conversations.build(workload, args.model_path, _run_seed(workload, concurrency, repeat, attempt),
                                    num_requests(workload, concurrency, args.quick), args.max_tokens)
        before = await chat_load.draft_counters(server.base_url)
        results, duration = await chat_load.run_conversations(server.base_url, model, chats, concurrency,
                                                              eos_logit_bias(args.model_path))
        summary = chat_load.summarize_chat(results, duration)
        after = await chat_load.draft_counters(server.base_url)
        if after is not None and "draft_tokens" not in summary:
            before = before or {"drafted": 0.0, "accepted": 0.0}  # a labelled counter appears at its first draft
            summary["draft_tokens"] = round(after["drafted"] - before["drafted"])
            summary["draft_tokens_accepted"] = round(after["accepted"] - before["accepted"])
        if workload != "grounded":
            summary.pop("outputs")  # only the grounded outputs are compared (speculation must not change them)
        return summary

    return one_run


async def _warm_up(server: peers.RunningServer, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """A few requests before measuring; the first checks that end-of-generation is banned."""
    chats = conversations.repeated_prompts(WARMUP_SEED, 4, num_distinct=4, max_tokens=16)
    results, _ = await chat_load.run_conversations(server.base_url, model, chats, 4, eos_logit_bias(args.model_path))
    first = results[0]
    return {"completion_tokens": first.num_output_tokens, "ok": first.success and first.num_output_tokens == 16,
            "error": first.error}


def _phase(workload: str):
    async def phase(servers: dict[str, peers.RunningServer], args: argparse.Namespace,
                    document: dict[str, Any]) -> None:
        section = document["workloads"].setdefault(workload, {"servers": {}})
        models = {}
        for name, server in servers.items():
            models[name] = await first_model_id(server.base_url)
            section["servers"][name] = {"command": server.command, "eos_check": await _warm_up(server, models[name], args),
                                        "levels": []}
        for level_index, concurrency in enumerate(args.concurrency):
            def workload_run(name: str, repeat: int, concurrency=concurrency):
                return _workload_run(workload, servers[name], models[name], concurrency, repeat, args)

            def describe(result: dict[str, Any], concurrency=concurrency) -> str:
                return (f"{workload} c={concurrency}: {result['output_throughput']:.1f} tok/s, "
                        f"TTFT p50 {result['p50_ttft_ms']:.0f} ms")

            medians = await run.interleaved_runs(servers, workload_run, describe, args, first_shift=level_index)
            for name, median in medians.items():
                section["servers"][name]["levels"].append({"concurrency": concurrency, **median})
        with_comparisons(section)

    return phase


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    binary = peers.build_llama_server()
    settings = peers.ServerSettings(args.model_path, args.threads, args.parallel, args.ctx)
    document: dict[str, Any] = {
        "name": args.name,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.workloads " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"model_path": args.model_path, "num_threads": args.threads, "num_parallel": args.parallel,
                     "ctx_per_sequence": args.ctx, "concurrency": args.concurrency, "repeats": args.repeats,
                     "quick": args.quick, "max_tokens_override": args.max_tokens, "api": "/v1/chat/completions, streaming, temperature 0, EOG banned",
                     "requests_per_run": {w: {c: num_requests(w, c, args.quick) for c in args.concurrency}
                                          for w in args.workloads}},
        "machine": describe_machine(binary),
        "workloads": {},
    }
    for workload in args.workloads:
        run.log(f"workload {workload}: servers {', '.join(servers_for(workload, args))}")
        run.run_phase(_phase(workload), servers_for(workload, args), settings, args, document)
    path = run.write_results(document, args.name)
    print(format_report(document))
    png = plot_workloads(document, run.RESULTS_DIR / f"{args.name}.png")
    print(f"\nresults: {path}\nplot:    {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
