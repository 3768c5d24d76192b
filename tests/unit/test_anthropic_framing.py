"""Anthropic's stream framing over the generation core (no model: a Fake* output stream): one index per
content block, a reasoning model's thinking as a thinking block before the text, thinking left out when
the request disables it, tool calls as tool_use blocks with input_json_delta, and a collected message's
blocks."""
from __future__ import annotations

import asyncio
import json

from serve.api.anthropic.sse import MessageFraming, content_blocks
from serve.api.generation import Generation, Timings, framed_events
from serve.api.reasoning import ReasoningSplitter
from serve.api.tools.calls import ToolCall
from serve.api.tools.formats import HERMES
from serve.api.tools.parser import ToolCallParser
from serve.sequence import FinishReason, Request, SamplingParams, StepOutput


class FakeStream:
    num_prompt_tokens = 5
    num_cached_tokens = 0

    def __init__(self, texts: list[str]):
        self._outputs = [StepOutput("r", text, 1) for text in texts]
        self._outputs[-1] = StepOutput("r", texts[-1], 1, FinishReason.STOP)

    def __aiter__(self):
        return self

    async def __anext__(self) -> StepOutput:
        if not self._outputs:
            raise StopAsyncIteration
        return self._outputs.pop(0)

    def abort(self) -> None:
        pass


def _events(texts: list[str], *, thinks: bool, shows_thinking: bool = True,
            calls_tools: bool = False) -> list[tuple[str, dict]]:
    request = Request(request_id="msg_1", model="m", prompt="", prompt_token_ids=[1], params=SamplingParams())
    generation = Generation(request, FakeStream(texts), Timings(started=0.0),
                            splitter=ReasoningSplitter() if thinks else None,
                            tool_parser=ToolCallParser(HERMES) if calls_tools else None)
    framing = MessageFraming(generation, "m", shows_thinking=shows_thinking)

    async def run() -> bytes:
        return b"".join([event async for event in framed_events(generation.outputs(), framing, "msg_1",
                                                                generation.splitter, generation.tool_parser)])

    events = []
    for chunk in asyncio.run(run()).decode().split("\n\n"):
        if chunk:
            name, data = chunk.split("\n")
            events.append((name[len("event: "):], json.loads(data[len("data: "):])))
    return events


def _blocks(events: list[tuple[str, dict]]) -> list[tuple[int, str, str]]:
    """(index, block type, joined delta text) per block, checking each block starts and stops once."""
    blocks, open_index = [], None
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(blocks)
            open_index = data["index"]
            blocks.append([data["index"], data["content_block"]["type"], ""])
        elif name == "content_block_delta":
            assert data["index"] == open_index
            delta = data["delta"]
            blocks[-1][2] += delta.get("text", delta.get("thinking", delta.get("partial_json", "")))
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None
    return [tuple(block) for block in blocks]


def test_plain_text_is_one_text_block_started_before_ping():
    events = _events(["Hel", "lo"], thinks=False)
    assert [name for name, _ in events[:3]] == ["message_start", "content_block_start", "ping"]
    assert _blocks(events) == [(0, "text", "Hello")]
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_thinking_comes_as_a_thinking_block_then_the_text_block():
    events = _events(["<thi", "nk>Let me", " see.</th", "ink>\n\nPar", "is."], thinks=True)
    assert [name for name, _ in events[:2]] == ["message_start", "ping"]
    assert _blocks(events) == [(0, "thinking", "Let me see."), (1, "text", "Paris.")]
    deltas = {data["delta"]["type"] for name, data in events if name == "content_block_delta"}
    assert deltas == {"thinking_delta", "text_delta"}


def test_disabled_thinking_is_left_out():
    events = _events(["<think>hmm</think>", "Paris."], thinks=True, shows_thinking=False)
    assert _blocks(events) == [(0, "text", "Paris.")]


def test_an_empty_output_is_still_one_text_block():
    events = _events([""], thinks=True)
    assert _blocks(events) == [(0, "text", "")]
    assert [name for name, _ in events[-3:]] == ["content_block_stop", "message_delta", "message_stop"]


def test_collected_blocks():
    assert content_blocks("Paris.", "Let me see.") == [
        {"type": "thinking", "thinking": "Let me see.", "signature": ""}, {"type": "text", "text": "Paris."}]
    assert content_blocks("", "") == [{"type": "text", "text": ""}]
    assert content_blocks("", "only thinking") == [{"type": "thinking", "thinking": "only thinking", "signature": ""}]


def test_tool_calls_are_tool_use_blocks_after_the_text():
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    events = _events(["Let me check.", call[:20], call[20:45], call[45:]], thinks=False, calls_tools=True)
    assert [name for name, _ in events[:2]] == ["message_start", "ping"]  # the first block is not known yet
    blocks = _blocks(events)
    assert [(index, kind) for index, kind, _ in blocks] == [(0, "text"), (1, "tool_use")]
    assert blocks[0][2] == "Let me check." and json.loads(blocks[1][2]) == {"city": "Paris"}
    start = next(data for name, data in events if name == "content_block_start" and data["index"] == 1)
    assert start["content_block"]["name"] == "get_weather" and start["content_block"]["input"] == {}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_collected_tool_use_blocks():
    calls = (ToolCall("call_1", "get_weather", '{"city": "Paris"}'), ToolCall("call_2", "f", '{"cut'))
    assert content_blocks("", "", calls) == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "f", "input": {}}]  # cut by max_tokens: no input
