"""llguidance's tokenizer for a llama.cpp vocabulary, built on a background thread when the model loads.

llguidance needs every token's bytes (and its own token trie over them) before it can compile a grammar.
Built at the first constrained request, as before, that took about 0.5 s on a quiet machine (2-3 s on a
loaded one) on the engine thread: every running stream stalled meanwhile, and the first constrained
request of a run paid it all. vLLM likewise compiles grammars off its engine loop. Built here while the
server starts instead, and the loop calls llama.cpp's C functions directly: llguidance's own
`lltokenizer_from_vocab` (the same loop through llama-cpp-python's Python wrappers) took 2.4 s where this
one's loop took 0.7 s, plus llguidance's trie (about 1 s), on the same loaded machine.
"""
from __future__ import annotations

import ctypes
import threading

import llama_cpp.llama_cpp as ll

MAX_PIECE_BYTES = 16 * 1024  # llguidance's own buffer size for a token's text


def token_bytes(vocab, cancelled: threading.Event) -> list[bytes] | None:
    """Every token's bytes as llguidance expects them (its llamacpp.lltokenizer_from_vocab): the piece with
    special tokens rendered, control tokens (and user-defined ones written like `<...>`) marked by a
    leading 0xFF. None when cancelled (the model is being freed)."""
    to_piece, get_attr = ll._lib.llama_token_to_piece, ll._lib.llama_vocab_get_attr
    control, user_defined = ll.LLAMA_TOKEN_ATTR_CONTROL, ll.LLAMA_TOKEN_ATTR_USER_DEFINED
    buffer = ctypes.create_string_buffer(MAX_PIECE_BYTES + 1)
    tokens = []
    for token in range(ll.llama_vocab_n_tokens(vocab)):
        if token % 4096 == 0 and cancelled.is_set():
            return None
        length = to_piece(vocab, token, buffer, MAX_PIECE_BYTES, 0, True)
        if length < 0:
            raise ValueError(f"token {token} has more than {MAX_PIECE_BYTES} bytes")
        piece = buffer.raw[:length]
        attributes = get_attr(vocab, token)
        if attributes & control or (attributes & user_defined and piece.startswith(b"<") and piece.endswith(b">")):
            piece = b"\xff" + piece
        tokens.append(piece)
    return tokens


class TokenizerBuild:
    """The tokenizer, built on a daemon thread from construction on; `result()` waits for it."""

    def __init__(self, vocab):
        self._vocab = vocab
        self._cancelled = threading.Event()
        self._tokenizer = None
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._build, name="llguidance-tokenizer", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        try:
            from llguidance._lib import LLTokenizer

            tokens = token_bytes(self._vocab, self._cancelled)
            if tokens is None:
                return
            # llguidance tokenizes grammar literals with llama.cpp's own tokenizer, through this pointer.
            tokenize = ctypes.cast(ll._lib.llama_tokenize, ctypes.c_void_p).value
            self._tokenizer = LLTokenizer.from_llamacpp(tokens=tokens, vocab_ptr=self._vocab, tokenize_fptr=tokenize,
                                                        eos_token=ll.llama_vocab_eos(self._vocab), slices=None)
        except Exception as exc:  # reported to the first constrained request, which then uses llama.cpp's grammar
            self._error = exc

    def result(self):
        self._thread.join()
        if self._tokenizer is None:
            raise RuntimeError(f"llguidance's tokenizer could not be built: {self._error or 'cancelled'}")
        return self._tokenizer

    def cancel(self) -> None:
        """Stop reading the vocabulary (before llama.cpp frees it) and wait for the thread."""
        self._cancelled.set()
        self._thread.join()
