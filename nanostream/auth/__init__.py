"""The token flow: origin, token checks and the used-token ledger.

onConnect -> :mod:`~nanostream.auth.admission` -> :mod:`~nanostream.auth.tokens`
-> :mod:`~nanostream.auth.ledger`.  Nothing here knows of WebSockets.
"""
