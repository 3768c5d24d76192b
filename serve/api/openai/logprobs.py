"""Logprobs in OpenAI's two shapes: chat's `logprobs.content` (a token, its logprob, its bytes and the
`top_logprobs` alternatives) and completions' legacy lists (`tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`), with the prompt's tokens in front for `echo` (the first prompt token has no logprob: null).

A token that is not whole UTF-8 on its own (a character split between tokens) is named as OpenAI does,
`bytes:\\xe2\\x80`; its `bytes` are exact either way.
"""
from __future__ import annotations

from typing import Any, Optional

from serve.sequence import TokenLogprob


def token_text(piece: bytes) -> str:
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{byte:02x}" for byte in piece)


def chat_entry(entry: TokenLogprob) -> dict[str, Any]:
    top = [{"token": token_text(piece), "logprob": logprob, "bytes": list(piece)} for _, piece, logprob in entry.top]
    return {"token": token_text(entry.piece), "logprob": entry.logprob, "bytes": list(entry.piece),
            "top_logprobs": top}


def chat_logprobs(entries: Optional[list[TokenLogprob]]) -> Optional[dict[str, Any]]:
    """A chat choice's `logprobs`; None when the request did not ask."""
    if entries is None:
        return None
    return {"content": [chat_entry(entry) for entry in entries], "refusal": None}


def completion_logprobs(entries: list[Optional[TokenLogprob]], first_offset: int = 0,
                        first_token_text: str = "") -> dict[str, Any]:
    """A text choice's `logprobs` for `entries` (prompt tokens first for echo, the first one None with
    `first_token_text`), offsets counted from `first_offset` characters into the choice's text."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = first_offset
    for entry in entries:
        if entry is None:  # the first prompt token: nothing came before it to predict it
            tokens.append(first_token_text), token_logprobs.append(None), top_logprobs.append(None)
            offsets.append(offset)
            offset += len(first_token_text)
            continue
        text = token_text(entry.piece)
        tokens.append(text)
        token_logprobs.append(entry.logprob)
        top_logprobs.append({token_text(piece): logprob for _, piece, logprob in entry.top})
        offsets.append(offset)
        offset += len(entry.piece.decode("utf-8", "replace"))
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": offsets}
