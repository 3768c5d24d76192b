"""Special tokens shown as text: llama.cpp leaves control tokens out of a token's piece unless asked, so a
marker the API must read (Mistral's `[TOOL_CALLS]`) would vanish from the output. These are the pieces of the
few control tokens a request keeps (SamplingParams.kept_special_tokens); every other token's piece is the
backend's usual one."""
from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp.llama_cpp as ll

_MAX_PIECE_BYTES = 256


def special_token_pieces(vocab: Any, texts: tuple[str, ...]) -> dict[int, bytes]:
    """token id -> its text, for each of `texts` that is one control token of `vocab`; a text the vocabulary
    spells with ordinary tokens appears in the output anyway and needs nothing."""
    pieces: dict[int, bytes] = {}
    for text in texts:
        data = text.encode("utf-8")
        tokens = (ll.llama_token * 4)()
        count = ll.llama_tokenize(vocab, data, len(data), tokens, len(tokens), False, True)  # parse specials
        if count == 1 and ll.llama_vocab_is_control(vocab, tokens[0]):
            buffer = ctypes.create_string_buffer(_MAX_PIECE_BYTES)
            size = ll.llama_token_to_piece(vocab, tokens[0], buffer, len(buffer), 0, True)  # special=True
            pieces[tokens[0]] = buffer.raw[:max(size, 0)]
    return pieces
