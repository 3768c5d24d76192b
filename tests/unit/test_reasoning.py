"""The <think> splitter on recorded outputs of the two formats the catalog's reasoning models write, fed
whole and cut at every possible chunk boundary (inside the tags too)."""
from __future__ import annotations

import pytest

from serve.api.harmony import HarmonySplitter
from serve.api.reasoning import ReasoningSplitter, opens_reasoning, reasoning_splitter

# Qwen3-1.7B (thinking on): the output opens the block itself.
QWEN3 = ("<think>\nOkay, the user is asking for the capital of France. That's Paris.\n</think>\n\n"
         "The capital of France is **Paris**.")
QWEN3_REASONING = "Okay, the user is asking for the capital of France. That's Paris."
QWEN3_ANSWER = "The capital of France is **Paris**."
# Qwen3 with /no_think: an empty block.
QWEN3_NO_THINK = "<think>\n\n</think>\n\nParis."
# DeepSeek-R1-Distill: the template ends the prompt with "<think>\n", so the output starts inside the block.
R1_PROMPT = "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"
R1 = "Alright, 2 plus 2.\nThat makes 4.\n</think>\n\n2 + 2 = **4**."
R1_REASONING = "Alright, 2 plus 2.\nThat makes 4."
R1_ANSWER = "2 + 2 = **4**."


def split(text: str, splitter: ReasoningSplitter, chunk_size: int | None = None,
          cut: int | None = None) -> tuple[str, str, list[tuple[str, str]]]:
    if cut is not None:
        chunks = [text[:cut], text[cut:]]
    elif chunk_size is not None:
        chunks = [text[i:i + chunk_size] for i in range(0, len(text), chunk_size)]
    else:
        chunks = [text]
    deltas = [splitter.feed(chunk) for chunk in chunks] + [splitter.flush()]
    return "".join(r for r, _ in deltas), "".join(c for _, c in deltas), deltas


@pytest.mark.parametrize("cut", range(len(QWEN3) + 1))
def test_qwen3_output_cut_anywhere_splits_the_same(cut):
    reasoning, content, deltas = split(QWEN3, ReasoningSplitter(), cut=cut)
    assert (reasoning, content) == (QWEN3_REASONING, QWEN3_ANSWER)
    assert not any("<" in r and "think" in r for r, _ in deltas)  # no partial tag ever leaks


@pytest.mark.parametrize("cut", range(len(R1) + 1))
def test_r1_output_cut_anywhere_splits_the_same(cut):
    reasoning, content, _ = split(R1, reasoning_splitter(None, R1_PROMPT), cut=cut)
    assert (reasoning, content) == (R1_REASONING, R1_ANSWER)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_token_sized_chunks(size):
    assert split(QWEN3, ReasoningSplitter(), chunk_size=size)[:2] == (QWEN3_REASONING, QWEN3_ANSWER)
    assert split(R1, ReasoningSplitter(starts_in_reasoning=True), chunk_size=size)[:2] == (R1_REASONING, R1_ANSWER)


def test_reasoning_streams_before_the_block_ends():
    splitter = ReasoningSplitter()
    assert splitter.feed("<think>\nFirst") == ("First", "")
    assert splitter.feed(" idea </th") == (" idea", "")  # the space may precede </think>: held
    assert splitter.feed("ink>\n\nAns") == ("", "Ans")
    assert splitter.feed("wer") == ("", "wer")


def test_an_empty_block_gives_no_reasoning():
    assert split(QWEN3_NO_THINK, ReasoningSplitter(), chunk_size=1)[:2] == ("", "Paris.")


@pytest.mark.parametrize("size", [1, 4, None])
def test_an_unterminated_block_is_all_reasoning(size):
    assert split("<think>\nStill thinking when max_tokens", ReasoningSplitter(), size)[:2] == (
        "Still thinking when max_tokens", "")


def test_output_without_a_block_is_all_content_and_later_tags_stay_text():
    text = "  Plain answer, then <think>not reasoning</think>."
    assert split(text, ReasoningSplitter(), chunk_size=1)[:2] == ("", text)
    assert split("<thin", ReasoningSplitter())[:2] == ("", "<thin")  # cut before the tag was complete


def test_which_requests_are_split():
    assert opens_reasoning(R1_PROMPT) and not opens_reasoning("<|im_start|>assistant\n")
    assert reasoning_splitter(None, "<|im_start|>assistant\n") is None
    assert reasoning_splitter("think_tags", "<|im_start|>assistant\n") is not None
    assert isinstance(reasoning_splitter("harmony", "<|start|>assistant"), HarmonySplitter)
