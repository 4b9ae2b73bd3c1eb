"""The fixed phrases a refused handshake is logged with.

README.rst lists them with their HTTP status and meaning.

Operators grep for these and metrics label by them, so they never change
and never carry request data.
"""

#: The opening handshake outgrew ``--max-handshake-bytes`` before it ended:
#: in its request line (414), or in its headers (431).
REQUEST_LINE_TOO_LONG = "request line too long"
HEADERS_TOO_LARGE = "request headers too large"
#: Autobahn found the request no valid WebSocket handshake (a header missing
#: or malformed, a second Origin, a wrong method or version).  Mostly 400;
#: Autobahn's own status is kept where it chose another (405, 426, 505).
MALFORMED = "malformed request"
ORIGIN_NOT_ALLOWED = "origin not allowed"
#: ``since`` is not ``<digits>-<digits>`` (each part at most 2**64 - 1), is
#: given more than once, or comes without the ``nanostream.v1`` subprotocol.
#: Checked before the token, which stays unused.
BAD_RESUME = "bad resume position"
#: ``--max-clients`` are open already; checked before the token, which stays
#: unused, so the client may retry with it.
TOO_MANY_CLIENTS = "too many clients"
NO_TOKEN = "no token supplied"
INVALID = "invalid token"
NO_EXPIRATION = "token has no expiration"
EXPIRED = "token has expired"
NOT_YET_VALID = "token not yet valid"
TOO_LONG = "token lifetime too long"
ALREADY_USED = "token already used"
#: The shared ledger (Redis) could not say whether the token was used.
LEDGER_UNAVAILABLE = "ledger unavailable"

#: Every phrase, in the order the checks run.
REASONS = (
    REQUEST_LINE_TOO_LONG,
    HEADERS_TOO_LARGE,
    MALFORMED,
    ORIGIN_NOT_ALLOWED,
    BAD_RESUME,
    TOO_MANY_CLIENTS,
    NO_TOKEN,
    INVALID,
    NO_EXPIRATION,
    EXPIRED,
    NOT_YET_VALID,
    TOO_LONG,
    ALREADY_USED,
    LEDGER_UNAVAILABLE,
)

#: HTTP status for each phrase: 403 for the origin, 401 for the token, 503
#: when the ledger cannot answer (the client may retry with a fresh token) or
#: the server is full (the client may retry later with the same token).
STATUS = {reason: 401 for reason in REASONS} | {
    REQUEST_LINE_TOO_LONG: 414,
    HEADERS_TOO_LARGE: 431,
    MALFORMED: 400,
    ORIGIN_NOT_ALLOWED: 403,
    BAD_RESUME: 400,
    TOO_MANY_CLIENTS: 503,
    LEDGER_UNAVAILABLE: 503,
}
