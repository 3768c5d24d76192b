"""Speculative decoding on an input-grounded workload: quantserve (prompt lookup on, and off) against
llama-server with its default flags and with its own n-gram speculation (`--spec-type ngram-simple`,
`ngram-map-k`, `ngram-mod`).

The workload: passages of 500-1,500 tokens (prose from Python's own documentation, `pydoc_data`, and code
from its standard library, so every machine has the same text) to copy, quote or rewrite; greedy, 128-320
output tokens (end-of-generation banned so every server writes the same number), one client, one request
at a time. The servers run side by side and take turns, a round at a time, in a rotated order; each round
opens its prompts with its own number, so no server reuses a cached prompt from an earlier round.

Reported per server: output tok/s over the round (median of the rounds, and the range), process CPU
seconds per 1,000 output tokens, and for quantserve the acceptance rate (drafted and accepted tokens
from /metrics). It also checks that quantserve's greedy output is the same with speculation on and off
(the share of identical answers, and where the first difference is).

    python -m benchmarks.speculative_check                 # 3 rounds of 8 prompts, about 15 min on 2 cores
    python -m benchmarks.speculative_check --rounds 1 --num-prompts 2 --servers quantserve,quantserve-off
"""
from __future__ import annotations

import argparse
import inspect
import json
import re
import statistics
import subprocess
import time
from pathlib import Path

import httpx

from benchmarks.machine import _own_seconds, describe_machine, wait_for_quiet
from benchmarks.peers import (REPO_ROOT, RunningServer, ServerSettings, _wait_ready, build_llama_server, free_port,
                              server_command)
from benchmarks.prompts import EOS_LOGIT_BIAS, count_tokens

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOG_DIR = Path(__file__).resolve().parent / ".cache" / "logs" / "speculative"
# name -> (peer, extra flags)
SERVERS = {
    "quantserve": ("quantserve", ()),
    "quantserve-off": ("quantserve", ("--speculative", "off")),
    "llama-server": ("llama-server", ()),
    "llama-server-ngram-simple": ("llama-server", ("--spec-type", "ngram-simple")),
    "llama-server-ngram-map-k": ("llama-server", ("--spec-type", "ngram-map-k")),
    "llama-server-ngram-mod": ("llama-server", ("--spec-type", "ngram-mod")),
}
PROSE_TOPICS = ("assignment", "attribute-access", "comparisons", "customization", "exceptions", "execmodel",
                "import", "numbers")
CODE_MODULES = ("textwrap", "json.encoder", "shlex", "fnmatch", "string", "bisect", "heapq", "colorsys")
# The task after the passage: SmolLM2-135M then copies (asked first, it writes text of its own).
TASKS = (
    "Here is a passage.\n\n{passage}\n\nRepeat the passage above exactly, word for word.",
    "Here is a passage.\n\n{passage}\n\nQuote the first three sentences of the passage above verbatim.",
    "Here is a passage.\n\n{passage}\n\nRewrite the passage above in plain words, keeping every example.",
    "Here is some Python code:\n\n{passage}\n\nAdd a comment above every function of the code above and output "
    "the whole code.",
)
OUTPUT_LENGTHS = (128, 192, 256, 320)
PASSAGE_LENGTHS = (1500, 600, 1100, 800, 1300, 500, 900, 1200)  # at most, in tokens


def _passage(index: int, model_path: str, max_tokens: int, min_tokens: int = 450) -> str:
    """Prose (even indexes) or code (odd), cut at a line end to at most `max_tokens` tokens."""
    if index % 2 == 0:
        from pydoc_data.topics import topics

        text = topics[PROSE_TOPICS[index // 2 % len(PROSE_TOPICS)]]
    else:
        import importlib

        text = inspect.getsource(importlib.import_module(CODE_MODULES[index // 2 % len(CODE_MODULES)]))
    lines, kept = text.splitlines(), []
    for line in lines:
        kept.append(line)
        if count_tokens(model_path, "\n".join(kept)) >= max_tokens:
            kept.pop()
            break
    passage = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    if count_tokens(model_path, passage) < min_tokens:
        raise ValueError(f"passage {index} has fewer than {min_tokens} tokens")
    return passage


def build_workload(model_path: str, num_prompts: int) -> list[dict]:
    """The prompt set: (task, passage, output length) for each prompt; code passages get the code task."""
    workload = []
    for index in range(num_prompts):
        passage = _passage(index, model_path, max_tokens=PASSAGE_LENGTHS[index % len(PASSAGE_LENGTHS)])
        task = TASKS[3] if index % 2 else TASKS[index // 2 % 3]
        workload.append({"prompt": task.format(passage=passage), "max_tokens": OUTPUT_LENGTHS[index % 4],
                         "num_passage_tokens": count_tokens(model_path, passage)})
    return workload


def _start(name: str, peer: str, extra: tuple[str, ...], settings: ServerSettings) -> RunningServer:
    """peers.start_server's command with this variant's own flags added."""
    port = free_port()
    command = [*server_command(peer, settings, port), *extra]
    log_path = LOG_DIR / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"starting {name}: {' '.join(command)}", flush=True)
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                   stdin=subprocess.DEVNULL)
    server = RunningServer(name, f"http://127.0.0.1:{port}", process, log_path, command)
    _wait_ready(server, 180.0)
    return server


def _spec_counts(client: httpx.Client) -> tuple[float, float]:
    response = client.get("/metrics")
    if response.status_code != 200:
        return 0.0, 0.0
    counts = {"draft": 0.0, "accepted": 0.0}
    for line in response.text.splitlines():
        for kind in counts:
            if line.startswith(f"quantserve_spec_decode_num_{kind}_tokens_total"):
                counts[kind] += float(line.rsplit(" ", 1)[1])
    return counts["draft"], counts["accepted"]


def run_round(server, workload: list[dict], round_index: int) -> dict:
    """Every prompt once, one at a time; returns throughput, CPU and the answers."""
    answers, num_tokens = [], 0
    with httpx.Client(base_url=server.base_url, timeout=600) as client:
        drafted_before, accepted_before = _spec_counts(client)
        cpu_before, started = _own_seconds(server.process.pid), time.perf_counter()
        for item in workload:
            body = {"messages": [{"role": "user", "content": f"Round {round_index}. {item['prompt']}"}],
                    "max_tokens": item["max_tokens"], "temperature": 0, "logit_bias": EOS_LOGIT_BIAS}
            answer = client.post("/v1/chat/completions", json=body).raise_for_status().json()
            answers.append(answer["choices"][0]["message"]["content"])
            num_tokens += answer["usage"]["completion_tokens"]
        seconds, cpu = time.perf_counter() - started, _own_seconds(server.process.pid) - cpu_before
        drafted_after, accepted_after = _spec_counts(client)
    return {"tok_s": num_tokens / seconds, "seconds": seconds, "num_output_tokens": num_tokens,
            "cpu_s_per_1k_tokens": 1000 * cpu / num_tokens, "drafted": drafted_after - drafted_before,
            "accepted": accepted_after - accepted_before, "answers": answers}


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def summarize(rounds: dict[str, list[dict]]) -> dict:
    summary = {}
    for name, runs in rounds.items():
        drafted, accepted = sum(r["drafted"] for r in runs), sum(r["accepted"] for r in runs)
        summary[name] = {"tok_s": statistics.median(r["tok_s"] for r in runs),
                         "tok_s_range": [min(r["tok_s"] for r in runs), max(r["tok_s"] for r in runs)],
                         "cpu_s_per_1k_tokens": statistics.median(r["cpu_s_per_1k_tokens"] for r in runs),
                         "acceptance": accepted / drafted if drafted else None, "drafted": drafted,
                         "accepted": accepted}
    if "quantserve" in rounds and "quantserve-off" in rounds:
        pairs = [(a, b) for on, off in zip(rounds["quantserve"], rounds["quantserve-off"])
                 for a, b in zip(on["answers"], off["answers"])]
        same = sum(a == b for a, b in pairs)
        summary["identical_on_off"] = {"share": same / len(pairs), "num_answers": len(pairs),
                                       "first_differences": [_first_difference(a, b) for a, b in pairs if a != b]}
    return summary


def print_table(summary: dict) -> None:
    base = summary.get("llama-server", {}).get("tok_s")
    best_spec = max((v["tok_s"] for k, v in summary.items() if k.startswith("llama-server-")), default=None)
    print(f"{'server':28} {'tok/s':>8} {'range':>15} {'CPU s/1k tok':>13} {'accept':>7} {'vs llama-server':>16}")
    for name, row in summary.items():
        if name == "identical_on_off":
            continue
        low, high = row["tok_s_range"]
        ratio = f"{row['tok_s'] / base:.2f}x" if base else "-"
        accept = f"{row['acceptance']:.0%}" if row["acceptance"] is not None else "-"
        print(f"{name:28} {row['tok_s']:8.1f} {low:7.1f}-{high:<7.1f} {row['cpu_s_per_1k_tokens']:13.1f} "
              f"{accept:>7} {ratio:>16}")
    if "quantserve" in summary and best_spec:
        print(f"quantserve / best llama-server --spec-type: {summary['quantserve']['tok_s'] / best_spec:.2f}x")
    if "identical_on_off" in summary:
        same = summary["identical_on_off"]
        print(f"quantserve greedy output identical with speculation on and off: {same['share']:.0%} of "
              f"{same['num_answers']} answers (first differences at characters {same['first_differences']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="GGUF (default: the embedded SmolLM2-135M Q4_1)")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, of {', '.join(SERVERS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet-wait-s", type=float, default=120.0, help="wait this long for an idle machine")
    parser.add_argument("--name", default="speculative", help="results file benchmarks/results/<name>.json")
    args = parser.parse_args(argv)
    from serve.models.catalog import embedded_model_path

    model_path = args.model_path or str(embedded_model_path())
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = set(names) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    if any(SERVERS[name][0] == "llama-server" for name in names):
        build_llama_server()
    workload = build_workload(model_path, args.num_prompts)
    servers, rounds = {}, {name: [] for name in names}
    try:
        for name in names:
            peer, extra = SERVERS[name]
            settings = ServerSettings(model_path=model_path, num_threads=args.threads, num_parallel=1,
                                      ctx_per_sequence=4096)
            servers[name] = _start(name, peer, extra, settings)
        for round_index in range(args.rounds):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                wait_for_quiet(args.quiet_wait_s)
                rounds[name].append(run_round(servers[name], workload, round_index))
                print(f"round {round_index + 1} {name}: {rounds[name][-1]['tok_s']:.1f} tok/s", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    summary = summarize(rounds)
    print_table(summary)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    result = {"machine": describe_machine(), "workload": [{k: v for k, v in item.items() if k != "prompt"}
                                                          for item in workload],
              "summary": summary, "rounds": rounds}
    (RESULTS_DIR / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
