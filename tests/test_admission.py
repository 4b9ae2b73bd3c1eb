"""The admission gate on its own: order of checks, logging, failing closed."""

from __future__ import annotations

from typing import Any

import support
from support import NOW, SECRET, mint
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from nanostream.auth import reasons
from nanostream.auth.admission import Admission, Refused
from nanostream.auth.ledger import IImmediateLedger, MemoryLedger
from nanostream.auth.origins import OriginPolicy
from nanostream.auth.tokens import AcceptedToken, TokenVerifier

ORIGIN = "https://live.example.com"
PEER = "tcp4:192.0.2.7:50000"


class UnreachableLedger:
    """A ledger whose every answer fails, as a lost Redis connection would."""

    size = 0

    def __init__(self) -> None:
        self.asked = 0

    def consume(self, token_id: bytes, expires_at: float) -> Deferred[bool]:
        self.asked += 1
        return fail(ConnectionError("ledger unreachable"))


def admit(gate: Admission, origin: str | None, tokens: list[str]) -> Deferred[Any]:
    """PEER's handshake through ``gate``, as a Deferred whether or not the
    gate answered at once."""
    return maybeDeferred(gate.decide, PEER, origin, tokens)


class AdmissionTests(SynchronousTestCase):
    """The gate decides, logs once per refusal, and never leaks a token."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.ledger = MemoryLedger(self.clock)
        self.events = support.capture_logs(self)

    def gate(
        self, origins: list[str] | None = None, *, auth: bool = True, ledger: Any = None
    ) -> Admission:
        verifier = TokenVerifier(SECRET) if auth else None
        if ledger is None and auth:
            ledger = self.ledger
        return Admission(self.clock, verifier, ledger, OriginPolicy(origins or ()))

    def refusal(self, d: Deferred[Any]) -> Refused:
        """The Refused a Deferred failed with."""
        return self.failureResultOf(d, Refused).value

    def refusals_logged(self) -> list[LogEvent]:
        return [
            event
            for event in self.events
            if event.get("log_namespace") == "nanostream.auth.admission"
        ]

    def test_valid_token_admitted(self) -> None:
        """A fresh valid token fires with the accepted token and logs nothing."""
        accepted = self.successResultOf(admit(self.gate(), None, [mint()]))
        self.assertIsInstance(accepted, AcceptedToken)
        self.assertEqual(accepted.expires_at, NOW + 60)
        self.assertEqual(self.refusals_logged(), [])

    def test_origin_checked_before_token(self) -> None:
        """A bad origin is reported even when the token is missing too."""
        refused = self.refusal(admit(self.gate([ORIGIN]), "https://evil.net", []))
        self.assertEqual(refused.reason, reasons.ORIGIN_NOT_ALLOWED)
        self.assertEqual(refused.status, 403)

    def test_origin_refusal_does_not_consume(self) -> None:
        """A token presented from a bad origin stays usable from a good one."""
        token = mint()
        gate = self.gate([ORIGIN])
        self.refusal(admit(gate, "https://evil.net", [token]))
        self.successResultOf(admit(gate, ORIGIN, [token]))

    def test_missing_origin_with_allow_list(self) -> None:
        """Without an Origin header an allow-list refuses the handshake."""
        refused = self.refusal(admit(self.gate([ORIGIN]), None, [mint()]))
        self.assertEqual(refused.reason, reasons.ORIGIN_NOT_ALLOWED)

    def test_no_parameter(self) -> None:
        """No ``t`` at all is "no token supplied" with 401."""
        refused = self.refusal(admit(self.gate(), None, []))
        self.assertEqual(refused.reason, reasons.NO_TOKEN)
        self.assertEqual(refused.status, 401)

    def test_empty_parameter(self) -> None:
        """An empty ``t`` is "no token supplied"."""
        refused = self.refusal(admit(self.gate(), None, [""]))
        self.assertEqual(refused.reason, reasons.NO_TOKEN)

    def test_repeated_parameter(self) -> None:
        """Two ``t`` values are an invalid token, whatever each one is."""
        refused = self.refusal(admit(self.gate(), None, [mint(), mint()]))
        self.assertEqual(refused.reason, reasons.INVALID)

    def test_repeated_parameter_consumes_nothing(self) -> None:
        """A refused pair of tokens leaves both unused."""
        token = mint()
        self.refusal(admit(self.gate(), None, [token, token]))
        self.assertEqual(self.ledger.size, 0)

    def test_verifier_reason_passed_through(self) -> None:
        """A verifier's rejection becomes a refusal with the same phrase."""
        refused = self.refusal(admit(self.gate(), None, [mint(exp=NOW - 1)]))
        self.assertEqual(refused.reason, reasons.EXPIRED)

    def test_second_use_refused(self) -> None:
        """The same token twice: admitted, then "token already used"."""
        gate = self.gate()
        token = mint()
        self.successResultOf(admit(gate, None, [token]))
        refused = self.refusal(admit(gate, None, [token]))
        self.assertEqual(refused.reason, reasons.ALREADY_USED)

    def test_each_refusal_logged_once_with_fields(self) -> None:
        """A refusal is one warning with reason, status, peer and origin."""
        self.refusal(admit(self.gate(), ORIGIN, []))
        [event] = self.refusals_logged()
        self.assertEqual(event["log_level"].name, "warn")
        self.assertEqual(event["reason"], reasons.NO_TOKEN)
        self.assertEqual(event["status"], 401)
        self.assertEqual(event["peer"], PEER)
        self.assertEqual(event["origin"], ORIGIN)

    def test_reuse_logged_once(self) -> None:
        """A reused token logs one refusal, and the first use logs none."""
        gate = self.gate()
        token = mint()
        self.successResultOf(admit(gate, None, [token]))
        self.refusal(admit(gate, None, [token]))
        [event] = self.refusals_logged()
        self.assertEqual(event["reason"], reasons.ALREADY_USED)

    def test_no_auth_admits_without_token(self) -> None:
        """With no verifier (--no-auth) a handshake without a token passes."""
        self.assertIsNone(self.successResultOf(admit(self.gate(auth=False), None, [])))

    def test_no_auth_still_checks_origin(self) -> None:
        """--no-auth does not switch off the origin allow-list."""
        gate = self.gate([ORIGIN], auth=False)
        self.successResultOf(admit(gate, ORIGIN, []))
        refused = self.refusal(admit(gate, "https://evil.net", []))
        self.assertEqual(refused.reason, reasons.ORIGIN_NOT_ALLOWED)

    def test_ledger_failure_is_not_admission(self) -> None:
        """A ledger that cannot answer makes the admission fail, never pass."""
        ledger = UnreachableLedger()
        d = admit(self.gate(ledger=ledger), None, [mint()])
        self.failureResultOf(d)
        self.assertEqual(ledger.asked, 1)

    def test_ledger_failure_refuses_with_503(self) -> None:
        """A ledger that cannot answer is a 503 "ledger unavailable", logged once."""
        refused = self.refusal(
            admit(self.gate(ledger=UnreachableLedger()), None, [mint()])
        )
        self.assertEqual(
            (refused.reason, refused.status), (reasons.LEDGER_UNAVAILABLE, 503)
        )
        [event] = self.refusals_logged()
        self.assertEqual(event["reason"], reasons.LEDGER_UNAVAILABLE)

    def test_token_not_logged(self) -> None:
        """No refusal event carries the token it refused."""
        gate = self.gate()
        tokens = [mint(), mint(exp=NOW - 1), mint(exp=NOW + 99999), "a.b.c"]
        self.successResultOf(admit(gate, None, [tokens[0]]))
        for token in tokens:
            self.refusal(admit(gate, None, [token]))
        self.assertEqual(len(self.refusals_logged()), 4)
        for event in self.events:
            text = repr(event)
            for token in tokens:
                self.assertNotIn(token, text)


@implementer(IImmediateLedger)
class BrokenImmediateLedger:
    """An in-process ledger that fails when asked (a bug, a full disk)."""

    size = 0

    def consume(self, token_id: bytes, expires_at: float) -> Deferred[bool]:
        return maybeDeferred(self.consume_now, token_id, expires_at)

    def consume_now(self, token_id: bytes, expires_at: float) -> bool:
        raise OSError("ledger broke")


class ImmediateDecisionTests(SynchronousTestCase):
    """With a ledger that answers at once, the decision needs no Deferred."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.events = support.capture_logs(self)

    def gate(self, ledger: Any) -> Admission:
        return Admission(self.clock, TokenVerifier(SECRET), ledger, OriginPolicy(()))

    def test_memory_ledger_answers_at_once(self) -> None:
        """A fresh token is admitted as a plain value, a reused one refused."""
        gate = self.gate(MemoryLedger(self.clock))
        token = mint()
        accepted = gate.decide(PEER, None, [token])
        self.assertIsInstance(accepted, AcceptedToken)
        with self.assertRaises(Refused) as raised:
            gate.decide(PEER, None, [token])
        self.assertEqual(raised.exception.reason, reasons.ALREADY_USED)

    def test_network_ledger_answers_later(self) -> None:
        """A ledger without an immediate answer still gets a Deferred."""
        decision = self.gate(UnreachableLedger()).decide(PEER, None, [mint()])
        self.assertIsInstance(decision, Deferred)
        refused = self.failureResultOf(decision, Refused).value
        self.assertEqual(refused.reason, reasons.LEDGER_UNAVAILABLE)

    def test_failing_immediate_ledger_fails_closed(self) -> None:
        """An immediate ledger that raises refuses with 503, logged once."""
        with self.assertRaises(Refused) as raised:
            self.gate(BrokenImmediateLedger()).decide(PEER, None, [mint()])
        self.assertEqual(
            (raised.exception.reason, raised.exception.status),
            (reasons.LEDGER_UNAVAILABLE, 503),
        )
        [event] = [
            e
            for e in self.events
            if e.get("log_namespace") == "nanostream.auth.admission"
        ]
        self.assertEqual(event["reason"], reasons.LEDGER_UNAVAILABLE)

    def test_refusal_before_the_ledger_is_raised(self) -> None:
        """A bad token is refused at once and never reaches the ledger."""
        ledger = MemoryLedger(self.clock)
        with self.assertRaises(Refused) as raised:
            self.gate(ledger).decide(PEER, None, ["a.b.c"])
        self.assertEqual(raised.exception.reason, reasons.INVALID)
        self.assertEqual(ledger.size, 0)
