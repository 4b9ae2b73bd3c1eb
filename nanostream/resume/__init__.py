"""Resume: every line has an id, and a client may take up where it left off.

:mod:`~nanostream.resume.ids` reads and writes line ids,
:mod:`~nanostream.resume.history` keeps a node's latest lines, and
:mod:`~nanostream.resume.replay` feeds a resuming client from the history
(or the source's archive) until it joins the live feed.  docs/resume.rst
describes the protocol for application developers.
"""
