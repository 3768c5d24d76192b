"""GBNF text checked before a request is submitted: a grammar llama.cpp cannot parse must be a 400, never
a failed engine step. llama.cpp's own parser checks it (no vocabulary needed, so the API can run it):
llama_sampler_init_grammar returns NULL for a syntax error, an undefined rule, left recursion or a
missing `root` (and logs why)."""
from __future__ import annotations

import functools

MAX_CACHED_GRAMMARS = 256


@functools.lru_cache(maxsize=MAX_CACHED_GRAMMARS)
def can_parse_gbnf(text: str) -> bool:
    """Whether llama.cpp parses the grammar (root rule `root`). A grammar naming tokens (`<|im_end|>`,
    `<[2]>`) needs a vocabulary and is refused here."""
    import llama_cpp.llama_cpp as ll

    handle = ll.llama_sampler_init_grammar(None, text.encode("utf-8"), b"root")
    if not handle:
        return False
    ll.llama_sampler_free(handle)
    return True
