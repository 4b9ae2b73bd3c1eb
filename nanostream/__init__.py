"""nanostream: a stream of lines, broadcast live to authenticated WebSocket clients."""

__version__ = "0.1.0"
