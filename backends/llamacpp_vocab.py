"""A llama.cpp model's vocabulary: tokenizing, token pieces, BOS, end-of-generation tokens."""
from __future__ import annotations

import ctypes

import llama_cpp.llama_cpp as ll


class Vocabulary:
    def __init__(self, model):
        self.handle = ll.llama_model_get_vocab(model)
        self.num_tokens = ll.llama_vocab_n_tokens(self.handle)
        # Looked up once: the per-token check then needs no call into llama.cpp (each releases the GIL).
        self.eog_tokens = frozenset(t for t in range(self.num_tokens) if ll.llama_vocab_is_eog(self.handle, t))
        self._pieces: dict[int, bytes] = {}
        bos = ll.llama_vocab_bos(self.handle)
        self.bos_text = self.text_of(bos)
        self.adds_bos = bos >= 0 and bool(ll.llama_vocab_get_add_bos(self.handle))
        self.eos_text = self.text_of(ll.llama_vocab_eos(self.handle))

    def text_of(self, token: int) -> str:
        """A special token's text (`<|im_end|>`); "" for none (-1)."""
        return ll.llama_vocab_get_text(self.handle, token).decode("utf-8", "replace") if token >= 0 else ""

    def tokenize(self, text: str) -> list[int]:
        # Templates often write the BOS themselves; adding another would double it.
        add_special = self.adds_bos and not (self.bos_text and text.startswith(self.bos_text))
        return tokenize(self.handle, text, add_special=add_special)

    def piece(self, token: int) -> bytes:
        """The token's bytes as they appear in the text (cached: called for every generated token)."""
        piece = self._pieces.get(token)
        if piece is None:
            buffer = ctypes.create_string_buffer(256)
            count = ll.llama_token_to_piece(self.handle, token, buffer, len(buffer), 0, False)
            piece = buffer.raw[:max(count, 0)]
            self._pieces[token] = piece
        return piece


def tokenize(vocab, text: str, *, add_special: bool) -> list[int]:
    """Token ids of `text` in llama.cpp's vocabulary `vocab`, special tokens in the text parsed as such;
    `add_special` adds the model's own (BOS, or BERT's [CLS] ... [SEP])."""
    data = text.encode("utf-8")
    capacity = len(data) + 4
    while True:
        buffer = (ll.llama_token * capacity)()
        count = ll.llama_tokenize(vocab, data, len(data), buffer, capacity, add_special, True)
        if count >= 0:
            return list(buffer[:count])
        capacity = -count  # too small: llama.cpp says how many it needs
