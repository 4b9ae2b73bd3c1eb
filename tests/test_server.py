"""make_server: what each keyword wires into the gate and the factory."""

from __future__ import annotations

from support import NOW, SECRET, mint
from test_broadcast import FakeClient
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import reasons
from nanostream.auth.admission import Refused
from nanostream.auth.ledger import MemoryLedger
from nanostream.auth.pacing import HANDSHAKES_PER_TURN
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


class LettingInTests(SynchronousTestCase):
    """``letting_in``: what upkeep asks before holding the reactor."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.server = make_server(SECRET, reactor=self.clock)

    def test_quiet_server(self) -> None:
        self.assertFalse(self.server.letting_in())

    def test_handshakes_waiting_for_their_turn(self) -> None:
        """Once a turn's handshakes are used up, the next waits: a wave."""
        pacer = self.server.factory.handshake_pacer
        arrivals = [WaitingHandshake() for _ in range(HANDSHAKES_PER_TURN + 1)]
        taken = [pacer.take(arrival) for arrival in arrivals]
        self.assertEqual(taken[-1], False)
        self.assertTrue(self.server.letting_in())
        self.clock.advance(0)
        self.assertEqual(arrivals[-1].turns, 1)
        self.assertFalse(self.server.letting_in())

    def test_replay_catching_a_client_up(self) -> None:
        """A resume in progress counts until its client is live."""
        broadcaster = self.server.broadcaster
        broadcaster.broadcast([b"line %d" % n for n in range(1, 4)])
        first = b"%d-1" % int(NOW * 1000)
        client = FakeClient()
        broadcaster.resume(client.sink, first)
        self.assertEqual(broadcaster.replaying, 1)
        self.assertTrue(self.server.letting_in())
        for _ in range(100):
            if not self.clock.getDelayedCalls():
                break
            self.clock.advance(0)
        self.assertEqual(broadcaster.replaying, 0)
        self.assertFalse(self.server.letting_in())


class WaitingHandshake:
    """A connection the pacer may keep waiting."""

    def __init__(self) -> None:
        self.turns = 0

    def handshake_turn(self) -> None:
        self.turns += 1
