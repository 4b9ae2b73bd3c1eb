"""Decides whether a handshake may become a client.

Runs the checks in the order README.rst lists them (origin, room for one
more client, token presence, signature and claims, single use; the first
that fails names the reason) and logs each refusal once,
with its fixed reason phrase, the peer and the Origin: never the token.  It
knows nothing of WebSockets; the protocol turns a :class:`Refused` into an
HTTP status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NoReturn

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nanostream.auth import reasons
from nanostream.auth.ledger import IImmediateLedger, ILedger
from nanostream.auth.origins import OriginPolicy
from nanostream.auth.tokens import AcceptedToken, TokenRejected, TokenVerifier
from nanostream.resume.ids import parse_id

_log = Logger()


class Refused(Exception):
    """A handshake refused for a reason the operator should see."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = reasons.STATUS[reason]


class Admission:
    """The gate every handshake passes; ``verifier=None`` means ``--no-auth``."""

    def __init__(
        self,
        clock: IReactorTime,
        verifier: TokenVerifier | None,
        ledger: ILedger | None,
        origins: OriginPolicy,
        *,
        full: Callable[[], bool] | None = None,
    ) -> None:
        """
        :param full: says whether the server has room for no more clients
            (``--max-clients``); asked before the token, so that a client
            refused for want of room keeps its token unused.
        """
        self._clock = clock
        self._verifier = verifier
        self._ledger = ledger
        self._origins = origins
        self._full = full
        self._consume_now = (
            ledger.consume_now if IImmediateLedger.providedBy(ledger) else None
        )
        #: Refusals so far by reason phrase, read by the metrics at scrape time.
        self.refused: dict[str, int] = dict.fromkeys(reasons.REASONS, 0)

    def decide(
        self,
        peer: str,
        origin: str | None,
        tokens: Sequence[str],
        *,
        since: Sequence[str] = (),
        with_ids: bool = False,
    ) -> AcceptedToken | None | Deferred[AcceptedToken | None]:
        """Admit or refuse one handshake, at once when the ledger answers at once.

        :param tokens: every value of the ``t`` query parameter.
        :return: the accepted token (None without auth), or a Deferred firing
            with it when the ledger must be asked over the network (Redis).
        :raises Refused: at once, or through the Deferred.
        :param since: every value of the ``since`` query parameter.
        :param with_ids: whether the client asked for ``nanostream.v1``,
            without which it cannot resume.
        """
        try:
            accepted = self._verified(origin, tokens, since, with_ids)
        except Refused as e:
            self._log_refusal(e, peer, origin)
            raise
        if accepted is None:
            return None
        if self._consume_now is not None:
            try:
                first = self._consume_now(accepted.token_id, accepted.expires_at)
            except Exception:
                self._ledger_failed(Failure(), peer, origin)
            return self._first_use(first, accepted, peer, origin)
        assert self._ledger is not None
        consumed = maybeDeferred(
            self._ledger.consume, accepted.token_id, accepted.expires_at
        )
        d: Deferred[AcceptedToken | None] = consumed.addCallbacks(
            self._first_use,
            self._ledger_failed,
            callbackArgs=(accepted, peer, origin),
            errbackArgs=(peer, origin),
        )
        return d

    def _verified(
        self,
        origin: str | None,
        tokens: Sequence[str],
        since: Sequence[str],
        with_ids: bool,
    ) -> AcceptedToken | None:
        """Every check before single use, in order; raises Refused."""
        if not self._origins.allows(origin):
            raise Refused(reasons.ORIGIN_NOT_ALLOWED)
        if since and not _resumable(since, with_ids):
            raise Refused(reasons.BAD_RESUME)
        if self._full is not None and self._full():
            raise Refused(reasons.TOO_MANY_CLIENTS)
        if self._verifier is None:
            return None
        if len(tokens) > 1:
            # Exactly one, even if all but one are empty.
            raise Refused(reasons.INVALID)
        if not tokens or not tokens[0]:
            raise Refused(reasons.NO_TOKEN)
        try:
            return self._verifier.verify(tokens[0], self._clock.seconds())
        except TokenRejected as e:
            raise Refused(e.reason) from None

    def _first_use(
        self, first: bool, accepted: AcceptedToken, peer: str, origin: str | None
    ) -> AcceptedToken:
        if first:
            return accepted
        refused = Refused(reasons.ALREADY_USED)
        self._log_refusal(refused, peer, origin)
        raise refused

    def _ledger_failed(
        self, failure: Failure, peer: str, origin: str | None
    ) -> NoReturn:
        """Fail closed: a token the ledger cannot vouch for may have been used.

        The ledger logs why it failed when its connection changes, not here
        once per handshake.
        """
        refused = Refused(reasons.LEDGER_UNAVAILABLE)
        self._log_refusal(refused, peer, origin)
        raise refused

    def refuse(
        self,
        reason: str,
        peer: str | None,
        origin: str | None,
        *,
        status: int | None = None,
    ) -> Refused:
        """Log and count a refusal decided before the gate could be asked.

        The protocol refuses an oversized or malformed request itself; it
        still counts where every other refusal does.

        :param status: the HTTP status, where it is not the reason's own.
        """
        refused = Refused(reason)
        if status is not None:
            refused.status = status
        self._log_refusal(refused, peer, origin)
        return refused

    def _log_refusal(
        self, refused: Refused, peer: str | None, origin: str | None
    ) -> None:
        """Log and count a refusal: the one place every refusal passes."""
        self.refused[refused.reason] = self.refused.get(refused.reason, 0) + 1
        _log.warn(
            "rejected handshake from {peer} (origin {origin}): {reason}",
            reason=refused.reason,
            status=refused.status,
            peer=peer,
            origin=origin,
        )


def _resumable(since: Sequence[str], with_ids: bool) -> bool:
    """One well-formed resume position, asked with the subprotocol that has ids."""
    if not with_ids or len(since) != 1:
        return False
    try:
        parse_id(since[0])
    except ValueError:
        return False
    return True
