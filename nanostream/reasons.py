"""The fixed phrases a refused handshake is logged with (BRIEF §3).

Operators grep for these and metrics label by them, so they never change
and never carry request data.
"""

ORIGIN_NOT_ALLOWED = "origin not allowed"
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
    ORIGIN_NOT_ALLOWED,
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
#: when the ledger cannot answer (the client may retry with a fresh token).
STATUS = {reason: 401 for reason in REASONS} | {
    ORIGIN_NOT_ALLOWED: 403,
    LEDGER_UNAVAILABLE: 503,
}
