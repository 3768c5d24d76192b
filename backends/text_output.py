"""Incremental detokenization with stop strings.

Token pieces arrive as bytes; a multi-byte UTF-8 character may span tokens, so bytes are held until they
form whole characters. Text that could be the beginning of a stop string is held back until it is known
not to be one, so a stop string never leaks into the output, even when split across tokens.
"""
from __future__ import annotations

import codecs


class TextOutput:
    def __init__(self, stop: tuple[str, ...] = ()):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""  # decoded text not yet released because it may start a stop string
        self.matched_stop: str | None = None  # the stop string that ended the text (Anthropic reports it)

    def feed(self, piece: bytes) -> tuple[str, bool]:
        """Add one token's bytes; return (text safe to release now, whether a stop string was hit)."""
        self._held += self._decoder.decode(piece)
        if not self._stop:
            text, self._held = self._held, ""
            return text, False
        cut = self._first_stop_index()
        if cut is not None:
            text, self._held = self._held[:cut], ""
            return text, True
        keep = self._longest_stop_prefix_suffix()
        text = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep:]
        return text, False

    def flush(self) -> str:
        """Release everything held (generation ended for another reason than a stop string)."""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _first_stop_index(self) -> int | None:
        hits = [(i, stop) for stop in self._stop if (i := self._held.find(stop)) >= 0]
        if not hits:
            return None
        index, self.matched_stop = min(hits, key=lambda hit: hit[0])
        return index

    def _longest_stop_prefix_suffix(self) -> int:
        """Length of the longest tail of the held text that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self._held)), longest, -1):
                if self._held.endswith(stop[:size]):
                    longest = size
                    break
        return longest
