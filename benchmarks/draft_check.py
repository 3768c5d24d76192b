"""Draft-model speculative decoding: the same target model served without a draft and with one, at one
client, on an input-grounded prompt set and a free-generation one.

The target is SmolLM2-135M-Instruct as F16 (made locally from the shipped Q4_1 GGUF with the `gguf`
package, tests/fixtures_gguf.py) or as Q8_0 (that F16 through llama.cpp's quantizer), or that F16 widened to
~1B parameters with zero MLP units (`--target padded-1b`, benchmarks/padded_target.py: the same outputs at
a 1B model's cost, a realistic size ratio for a 135M draft); the draft is the shipped Q4_1. The issue's
target: >= 1.4x the target's tok/s without a draft, one client.

Prompt sets (greedy, end-of-generation banned so every server writes the same number of tokens, one
request at a time, each round's prompts opened with its own number so no prompt is cached from an earlier
round):
- grounded: benchmarks/speculative_check.py's passages of 500-1,500 tokens to copy, quote or rewrite,
  128-320 output tokens;
- free: open questions and stories with no passage to copy from, 128-256 output tokens.

Servers (they run side by side and take turns, a round at a time, in a rotated order):
`target` (quantserve --speculative off), `target+draft` (quantserve --draft-model: drafting where the
measured cost of a draft decode pays), and on request `target+draft-always` (with --speculative draft:
drafting whatever it costs), `target+ngram`, `llama-server` and `llama-server+draft` (its draft-simple, `--spec-draft-model`).
Reported per prompt set and server: output tok/s (median of the rounds, and the range), CPU seconds per
1,000 output tokens, the acceptance rate (drafted and accepted tokens: quantserve's /metrics), the
speed-up of target+draft over target, and the share of answers identical to the target's.

    python -m benchmarks.draft_check                                    # 3 rounds, 6 + 6 prompts
    python -m benchmarks.draft_check --rounds 1 --num-prompts 1 --max-tokens 32 --name draft_short
    python -m benchmarks.draft_check --servers target,target+draft,llama-server,llama-server+draft
    python -m benchmarks.draft_check --target padded-1b --name draft_padded_1b
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.machine import describe_machine, wait_for_quiet
from benchmarks.peers import ServerSettings, build_llama_server
from benchmarks.speculative_check import _start, build_workload, run_round

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CACHE_DIR = Path(__file__).resolve().parent / ".cache" / "draft"
SERVER_NAMES = ("target", "target+draft", "target+draft-always", "target+ngram", "llama-server",
                "llama-server+draft")
DEFAULT_SERVERS = ("target", "target+draft")
FREE_PROMPTS = (
    "Write a story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, step by step.",
    "Describe a walk through a busy market in a small town on a Saturday morning.",
    "What are the advantages and disadvantages of living in a big city?",
    "Write a letter to a friend about your first week at a new job.",
    "Explain why the sky is blue to a ten-year-old.",
    "Tell me about the history of bicycles and how they changed over time.",
    "Write a short essay on why people enjoy gardening.",
)
FREE_OUTPUT_LENGTHS = (128, 192, 256, 160)


def _server_flags(name: str, draft_path: str, draft_max: int | None) -> tuple[str, tuple[str, ...]]:
    """(peer, extra flags) of a server name."""
    draft_max_flags = ("--draft-max", str(draft_max)) if draft_max else ()
    return {"target": ("quantserve", ("--speculative", "off")),
            "target+draft": ("quantserve", ("--draft-model", draft_path, *draft_max_flags)),
            "target+draft-always": ("quantserve", ("--draft-model", draft_path, "--speculative", "draft",
                                                   *draft_max_flags)),
            "target+ngram": ("quantserve", ("--speculative", "ngram")),
            "llama-server": ("llama-server", ()),
            "llama-server+draft": ("llama-server", ("--spec-type", "draft-simple", "--spec-draft-model", draft_path, *(
                ("--spec-draft-n-max", str(draft_max)) if draft_max else ())))}[name]


def target_model(kind: str) -> str:
    """The target GGUF: "f16" (built once, cached), "q8_0" (that F16 quantized once), "padded-1b" or
    "padded-1b-q8_0" (the F16 widened to ~1B parameters with zero MLP units, benchmarks/padded_target.py)
    or a path."""
    if kind.startswith("padded-1b"):
        from benchmarks.padded_target import padded_target

        return str(padded_target("q8_0" if kind.endswith("q8_0") else "f16"))
    if kind not in ("f16", "q8_0"):
        return kind
    from tests.fixtures_gguf import f16_gguf

    f16 = f16_gguf()
    if kind == "f16":
        return str(f16)
    from serve.models.quantize import quantize_file

    out = CACHE_DIR / "SmolLM2-135M-Instruct-Q8_0.gguf"
    if not out.exists():
        quantize_file(f16, "q8_0", out, progress=False)
    return str(out)


def free_workload(num_prompts: int) -> list[dict]:
    return [{"prompt": FREE_PROMPTS[i % len(FREE_PROMPTS)], "max_tokens": FREE_OUTPUT_LENGTHS[i % 4]}
            for i in range(num_prompts)]


def summarize(rounds: dict[str, dict[str, list[dict]]]) -> dict:
    """Per prompt set: per server the median tok/s and its range, CPU, acceptance, identical answers; and
    the speed-up of target+draft over target."""
    summary = {}
    for set_name, by_server in rounds.items():
        rows = {}
        reference = [a for run in by_server.get("target", []) for a in run["answers"]]
        for name, runs in by_server.items():
            drafted, accepted = sum(r["drafted"] for r in runs), sum(r["accepted"] for r in runs)
            answers = [a for run in runs for a in run["answers"]]
            rows[name] = {"tok_s": statistics.median(r["tok_s"] for r in runs),
                          "tok_s_range": [min(r["tok_s"] for r in runs), max(r["tok_s"] for r in runs)],
                          "cpu_s_per_1k_tokens": statistics.median(r["cpu_s_per_1k_tokens"] for r in runs),
                          "acceptance": accepted / drafted if drafted else None, "drafted": drafted,
                          "accepted": accepted,
                          "identical_to_target": (sum(a == b for a, b in zip(answers, reference)) / len(reference)
                                                  if reference and name.startswith("target") else None)}
        for drafted in ("target+draft", "target+draft-always"):
            if "target" in rows and drafted in rows:
                rows[f"speedup_{drafted}"] = rows[drafted]["tok_s"] / rows["target"]["tok_s"]
        summary[set_name] = rows
    return summary


def print_table(summary: dict) -> None:
    print(f"{'set':9} {'server':20} {'tok/s':>8} {'range':>15} {'CPU s/1k tok':>13} {'accept':>7} {'same':>6}")
    for set_name, rows in summary.items():
        for name, row in rows.items():
            if not isinstance(row, dict):
                continue
            low, high = row["tok_s_range"]
            accept = f"{row['acceptance']:.0%}" if row["acceptance"] is not None else "-"
            same = f"{row['identical_to_target']:.0%}" if row["identical_to_target"] is not None else "-"
            print(f"{set_name:9} {name:20} {row['tok_s']:8.1f} {low:7.1f}-{high:<7.1f} "
                  f"{row['cpu_s_per_1k_tokens']:13.1f} {accept:>7} {same:>6}")
        for key in (k for k in rows if k.startswith("speedup_")):
            print(f"{set_name:9} {key.removeprefix('speedup_')} / target: {rows[key]:.2f}x (target >= 1.4x)")


def plot(summary: dict, title: str, path: Path) -> Path:
    """Bars of tok/s per prompt set and server, with each server's acceptance rate above its bar."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    sets = list(summary)
    names = [n for n in SERVER_NAMES if any(n in summary[s] for s in sets)]
    width = 0.8 / max(len(names), 1)
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for offset, name in enumerate(names):
        xs = [i + offset * width for i in range(len(sets))]
        values = [summary[s].get(name, {}).get("tok_s", 0) for s in sets]
        bars = axis.bar(xs, values, width, label=name)
        for bar, s in zip(bars, sets):
            acceptance = summary[s].get(name, {}).get("acceptance")
            if acceptance is not None:
                axis.annotate(f"{acceptance:.0%} acc.", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                              ha="center", va="bottom", fontsize=8)
    axis.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(sets))], sets)
    axis.set_ylabel("output tokens / s, one client (higher is better)")
    axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="f16",
                        help="f16 (default), q8_0, padded-1b, padded-1b-q8_0 (~1B parameters, the same function), "
                             "or a GGUF path")
    parser.add_argument("--draft", help="the draft GGUF (default: the shipped SmolLM2-135M Q4_1)")
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS), help=f"of {', '.join(SERVER_NAMES)}")
    parser.add_argument("--sets", default="grounded,free", help="prompt sets: grounded, free")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=6, help="prompts per set")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, help="cap every prompt's output length (a short check)")
    parser.add_argument("--draft-max", type=int, help="target+draft's --draft-max (default: the server's, 8)")
    parser.add_argument("--quiet-wait-s", type=float, default=120.0, help="wait this long for an idle machine")
    parser.add_argument("--name", default="draft", help="results benchmarks/results/<name>.json and .png")
    args = parser.parse_args(argv)
    from serve.models.catalog import embedded_model_path

    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if set(names) - set(SERVER_NAMES):
        parser.error(f"unknown servers {sorted(set(names) - set(SERVER_NAMES))}; choose from {', '.join(SERVER_NAMES)}")
    draft_path, target_path = args.draft or str(embedded_model_path()), target_model(args.target)
    if any(n.startswith("llama-server") for n in names):
        build_llama_server()
    builders = {"grounded": lambda: build_workload(target_path, args.num_prompts),
                "free": lambda: free_workload(args.num_prompts)}
    workloads = {s: builders[s]() for s in args.sets.split(",")}
    for item in (item for workload in workloads.values() for item in workload):
        item["max_tokens"] = min(item["max_tokens"], args.max_tokens or item["max_tokens"])
    rounds = {s: {n: [] for n in names} for s in workloads}
    servers = {}
    try:
        settings = ServerSettings(model_path=target_path, num_threads=args.threads, num_parallel=1,
                                  ctx_per_sequence=4096)
        for name in names:
            servers[name] = _start(name, *_server_flags(name, draft_path, args.draft_max), settings)
        for round_index in range(args.rounds):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for set_name, workload in workloads.items():
                for name in order:
                    wait_for_quiet(args.quiet_wait_s)
                    rounds[set_name][name].append(run_round(servers[name], workload, round_index))
                    print(f"round {round_index + 1} {set_name} {name}: "
                          f"{rounds[set_name][name][-1]['tok_s']:.1f} tok/s", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    summary = summarize(rounds)
    print_table(summary)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    result = {"machine": machine, "target": target_path, "draft": draft_path, "threads": args.threads,
              "draft_max": args.draft_max,
              "summary": summary, "rounds": rounds}
    (RESULTS_DIR / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    title = (f"target {Path(target_path).name}, draft {Path(draft_path).name}, {args.threads} threads, "
             f"median of {args.rounds} rounds - {machine.get('cpu_model', '')}")
    print(f"wrote {plot(summary, title, RESULTS_DIR / f'{args.name}.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
