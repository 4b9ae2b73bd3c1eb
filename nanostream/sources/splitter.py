"""Cuts a byte stream into lines.

A line ends at ``\\n``; one trailing ``\\r`` is stripped; empty lines are
skipped; a line longer than the limit is discarded whole, however it was
chunked, and reading goes on with the next line.  Memory stays bounded by
the limit: an overlong line is never buffered past it.
"""

from __future__ import annotations

from collections.abc import Callable

DEFAULT_MAX_LINE_BYTES = 1024 * 1024


class LineSplitter:
    """Incremental splitter: feed it chunks, get whole lines back."""

    def __init__(
        self,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        on_overlong: Callable[[int], None] | None = None,
    ) -> None:
        """
        :param on_overlong: called with the length seen so far (at least
            ``max_line_bytes + 1``) for each discarded line.
        """
        self.max_line_bytes = max_line_bytes
        self._on_overlong = on_overlong
        self._partial = b""
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        """Return the complete lines ``data`` finishes, in order."""
        pieces = data.split(b"\n")
        tail = pieces.pop()
        limit = self.max_line_bytes
        lines = []
        if pieces:
            if self._discarding:
                # The rest of a line already reported too long.
                self._discarding = False
                pieces[0] = b""
            elif self._partial:
                pieces[0] = self._partial + pieces[0]
            self._partial = b""
            for line in pieces:
                if line.endswith(b"\r"):
                    line = line[:-1]
                if not line:
                    continue
                if len(line) > limit:
                    self._overlong(len(line))
                    continue
                lines.append(line)
            partial = tail
        else:
            partial = self._partial + tail if self._partial else tail
        if self._discarding:
            return lines
        # A trailing "\r" may belong to a "\r\n" still to come.
        if len(partial) > limit + 1 or (
            len(partial) == limit + 1 and not partial.endswith(b"\r")
        ):
            self._overlong(len(partial))
            self._discarding = True
            partial = b""
        self._partial = partial
        return lines

    def finish(self) -> list[bytes]:
        """End of input: a last line without ``\\n`` is still a line."""
        partial, self._partial = self._partial, b""
        if self._discarding:
            self._discarding = False
            return []
        if partial.endswith(b"\r"):
            partial = partial[:-1]
        if not partial:
            return []
        if len(partial) > self.max_line_bytes:
            self._overlong(len(partial))
            return []
        return [partial]

    def _overlong(self, length: int) -> None:
        if self._on_overlong is not None:
            self._on_overlong(length)
