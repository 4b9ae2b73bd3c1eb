"""make_server: what each keyword wires into the gate and the factory."""

from __future__ import annotations

from support import NOW, SECRET, mint
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import reasons
from nanostream.auth.admission import Refused
from nanostream.auth.ledger import MemoryLedger
from nanostream.auth.tokens import TokenVerifier
from nanostream.server import Server, make_server

PEER = "tcp4:192.0.2.7:50000"


class MakeServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)

    def refusal(
        self, server: Server, tokens: list[str], origin: str | None = None
    ) -> str:
        """The reason the server's gate gives for refusing ``tokens``."""
        e = self.assertRaises(Refused, server.admission.decide, PEER, origin, tokens)
        return e.reason

    def test_without_key_anyone_listens(self) -> None:
        """No key means no tokens and no ledger: a bare handshake is admitted."""
        server = make_server(reactor=self.clock)
        self.assertIsNone(server.ledger)
        self.assertIsNone(server.admission.decide(PEER, None, []))

    def test_key_admits_each_token_once(self) -> None:
        """With a key, a token signed with it opens once, in a memory ledger."""
        server = make_server(SECRET, reactor=self.clock)
        self.assertIsInstance(server.ledger, MemoryLedger)
        token = mint()
        self.assertIsNotNone(server.admission.decide(PEER, None, [token]))
        self.assertEqual(self.refusal(server, [token]), reasons.ALREADY_USED)
        self.assertEqual(self.refusal(server, []), reasons.NO_TOKEN)
        self.assertEqual(self.refusal(server, [mint(b"k" * 32)]), reasons.INVALID)

    def test_time_comes_from_the_reactor(self) -> None:
        """A token expires by the reactor's clock, not the wall clock."""
        server = make_server(SECRET, reactor=self.clock)
        token = mint(ttl=10)
        self.clock.advance(10)
        self.assertEqual(self.refusal(server, [token]), reasons.EXPIRED)

    def test_token_limits(self) -> None:
        """leeway and max_token_ttl reach the verifier built from the key."""
        server = make_server(SECRET, reactor=self.clock, max_token_ttl=60, leeway=5)
        self.assertEqual(self.refusal(server, [mint(ttl=70)]), reasons.TOO_LONG)
        late = mint(ttl=10)
        self.clock.advance(14)
        self.assertIsNotNone(server.admission.decide(PEER, None, [late]))

    def test_verifier_replaces_key(self) -> None:
        """A verifier given is the one used, whatever key is given beside it."""
        other = b"another-key-entirely-long-enough-0123456789"
        server = make_server(SECRET, reactor=self.clock, verifier=TokenVerifier(other))
        self.assertIsNotNone(server.admission.decide(PEER, None, [mint(other)]))
        self.assertEqual(self.refusal(server, [mint()]), reasons.INVALID)

    def test_ledger_given_is_used(self) -> None:
        """A ledger given remembers the tokens the gate admits."""
        ledger = MemoryLedger(self.clock)
        server = make_server(SECRET, reactor=self.clock, ledger=ledger)
        self.assertIs(server.ledger, ledger)
        server.admission.decide(PEER, None, [mint()])
        self.assertEqual(ledger.size, 1)

    def test_ledger_without_key_refused(self) -> None:
        """A ledger without tokens to consume is a mistake, not silently ignored."""
        e = self.assertRaises(
            ValueError,
            make_server,
            reactor=self.clock,
            ledger=MemoryLedger(self.clock),
        )
        self.assertIn("key", str(e))

    def test_origins_and_room(self) -> None:
        """The origin policy and the tracker's bound guard the gate."""
        server = make_server(
            reactor=self.clock, origins=["https://ok.example"], max_clients=1
        )
        self.assertEqual(
            self.refusal(server, [], origin="https://evil.example"),
            reasons.ORIGIN_NOT_ALLOWED,
        )
        self.assertIsNone(server.admission.decide(PEER, "https://ok.example", []))
        server.tracker.open = 1
        self.assertEqual(
            self.refusal(server, [], origin="https://ok.example"),
            reasons.TOO_MANY_CLIENTS,
        )

    def test_factory_options(self) -> None:
        """Ping, handshake and buffer options reach the factory and broadcaster."""
        server = make_server(
            reactor=self.clock,
            ping_interval=7,
            ping_timeout=3,
            handshake_timeout=2.5,
            max_handshake_bytes=4096,
            max_buffer_bytes=1000,
        )
        factory = server.factory
        self.assertEqual(factory.protocol.autoPingInterval, 7)
        self.assertEqual(factory.protocol.autoPingTimeout, 3)
        self.assertEqual(factory.protocol.openHandshakeTimeout, 2.5)
        self.assertEqual(factory.max_handshake_bytes, 4096)
        self.assertEqual(server.broadcaster.max_buffer_bytes, 1000)
        self.assertIs(factory.reactor, self.clock)
        self.assertIs(factory.admission, server.admission)
        self.assertIs(factory.broadcaster, server.broadcaster)
        self.assertIs(factory.tracker, server.tracker)
