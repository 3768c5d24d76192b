"""The Responses stream framing over the generation core (no model: a Fake* output stream): one
output_index per item, a reasoning model's thinking as a reasoning item before the message, every item
added and done once, the final response's output equal to what a collected answer gives."""
from __future__ import annotations

import asyncio
import json

from serve.api.generation import Generation, Timings, framed_events
from serve.api.reasoning import ReasoningSplitter
from serve.api.tools.formats import HERMES
from serve.api.tools.parser import ToolCallParser
from serve.api.responses.events import ResponseDraft, ResponseFraming, collected_items
from serve.api.responses.protocol import ResponsesRequest
from serve.sequence import FinishReason, Request, SamplingParams, StepOutput


class FakeStream:
    num_prompt_tokens = 5
    num_cached_tokens = 0

    def __init__(self, texts: list[str], reason: FinishReason):
        self._outputs = [StepOutput("r", text, 1) for text in texts]
        self._outputs[-1] = StepOutput("r", texts[-1], 1, reason)

    def __aiter__(self):
        return self

    async def __anext__(self) -> StepOutput:
        if not self._outputs:
            raise StopAsyncIteration
        return self._outputs.pop(0)

    def abort(self) -> None:
        pass


def _stream(texts: list[str], *, thinks: bool, reason: FinishReason = FinishReason.STOP,
            calls_tools: bool = False) -> tuple[list[dict], str]:
    request = Request(request_id="resp_1", model="m", prompt="", prompt_token_ids=[1], params=SamplingParams())
    generation = Generation(request, FakeStream(texts, reason), Timings(started=0.0),
                            splitter=ReasoningSplitter() if thinks else None,
                            tool_parser=ToolCallParser(HERMES) if calls_tools else None)
    draft = ResponseDraft("resp_1", "m", ResponsesRequest(input="hi"), generation)
    stored = []
    framing = ResponseFraming(draft, lambda response, text: stored.append(text))

    async def run() -> bytes:
        return b"".join([event async for event in framed_events(generation.outputs(), framing, "resp_1",
                                                                generation.splitter, generation.tool_parser)])

    events = [json.loads(chunk.split("\n")[1][len("data: "):])
              for chunk in asyncio.run(run()).decode().split("\n\n") if chunk]
    return events, stored[0]


def _items(events: list[dict]) -> list[tuple[int, str, str]]:
    """(output_index, item type, joined deltas) per item, checking each is added and done once, in order."""
    items, open_index = [], None
    for event in events:
        kind = event["type"]
        if kind == "response.output_item.added":
            assert open_index is None and event["output_index"] == len(items)
            open_index = event["output_index"]
            items.append([open_index, event["item"]["type"], ""])
        elif kind.endswith("_text.delta") or kind == "response.function_call_arguments.delta":
            assert event["output_index"] == open_index
            items[-1][2] += event["delta"]
        elif kind == "response.output_item.done":
            item = event["item"]
            text = item["arguments"] if item["type"] == "function_call" else item["content"][0]["text"]
            assert event["output_index"] == open_index and text == items[-1][2]
            open_index = None
    assert open_index is None
    return [tuple(item) for item in items]


def test_plain_text_is_one_message_added_at_once():
    events, stored = _stream(["Hel", "lo"], thinks=False)
    assert [event["type"] for event in events[:4]] == ["response.created", "response.in_progress",
                                                       "response.output_item.added", "response.content_part.added"]
    assert _items(events) == [(0, "message", "Hello")] and stored == "Hello"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))


def test_thinking_is_a_reasoning_item_before_the_message():
    events, stored = _stream(["<think>Let me", " see.</think>\n\nPar", "is."], thinks=True)
    assert _items(events) == [(0, "reasoning", "Let me see."), (1, "message", "Paris.")]
    kinds = [event["type"] for event in events]
    assert "response.reasoning_text.delta" in kinds and "response.reasoning_text.done" in kinds
    final = events[-1]["response"]
    assert final["status"] == "completed" and [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["content"] == [{"type": "reasoning_text", "text": "Let me see."}]
    assert stored == "Paris."  # the conversation carries the answer, not the thinking


def test_output_cut_while_thinking_is_an_incomplete_reasoning_item_only():
    events, stored = _stream(["<think>Let me", " see"], thinks=True, reason=FinishReason.LENGTH)
    final = events[-1]
    assert final["type"] == "response.incomplete" and stored == ""
    assert [(item["type"], item["status"]) for item in final["response"]["output"]] == [("reasoning", "incomplete")]
    collected = collected_items("length", "", "Let me see")
    assert [(item["type"], item["status"]) for item in collected] == [("reasoning", "incomplete")]


def test_collected_items():
    assert [item["type"] for item in collected_items("stop", "Paris.", "Let me see.")] == ["reasoning", "message"]
    assert [item["type"] for item in collected_items("stop", "", "")] == ["message"]


def test_tool_calls_are_function_call_items_after_the_message():
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    events, stored = _stream(["Let me check.", call[:20], call[20:45], call[45:]], thinks=False, calls_tools=True)
    items = _items(events)
    assert [(index, kind) for index, kind, _ in items] == [(0, "message"), (1, "function_call")]
    assert json.loads(items[1][2]) == {"city": "Paris"} and stored == "Let me check."
    done = next(event for event in events if event["type"] == "response.function_call_arguments.done")
    assert done["name"] == "get_weather" and json.loads(done["arguments"]) == {"city": "Paris"}
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["call_id"].startswith("call_") and final["status"] == "completed"
