"""Ids, ``nanostream.v1`` framing, replay from the history and source gaps,
at the broadcaster, with recording sinks and a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from test_broadcast import FakeClient, parse_frames
from test_socket_sink import FakeSocket, Peer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanostream.broadcast import Broadcaster
from nanostream.resume.history import History
from nanostream.resume.ids import format_key, parse_id
from nanostream.resume.replay import CHUNK_BYTES
from nanostream.resume.turns import STEP_BYTES, TURN_BYTES, TURN_SECONDS, Turns

START = 1_700_000_000.0
START_MS = b"1700000000000"


def lid(n: int) -> bytes:
    """The id of the n-th line of a node-numbered source."""
    return START_MS + b"-%d" % n


class Client(FakeClient):
    """A FakeClient that also records a close for a source gap."""

    def __init__(self) -> None:
        super().__init__()
        self.closed_for_gap = 0

    def closeForGap(self) -> None:
        self.closed_for_gap += 1

    def messages(self) -> list[bytes]:
        return self.payloads()


def numbered(first: int, last: int) -> list[bytes]:
    return [b"line %d" % n for n in range(first, last + 1)]


def with_ids(first: int, last: int) -> list[bytes]:
    return [lid(n) + b" line %d" % n for n in range(first, last + 1)]


class Fixture(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.history = History(max_lines=100, max_bytes=10**6)
        self.broadcaster = Broadcaster(10**6, self.clock, self.history)

    def client(self, *, ids: bool = False, since: bytes | None = None) -> Client:
        client = Client()
        if since is not None:
            self.broadcaster.resume(client.sink, since)
        else:
            self.broadcaster.add(client.sink, with_ids=ids)
        return client

    def turn(self) -> None:
        """One reactor turn: the calls due now, not those they schedule."""
        calls, self.clock.calls = self.clock.calls, []
        for call in calls:
            call.func(*call.args, **call.kw)

    def settle(self) -> None:
        """Run every pending replay step."""
        for _ in range(10_000):
            if not self.clock.calls:
                return
            self.turn()
        raise AssertionError("replays never settled")


class LiveTests(Fixture):
    def test_ids_number_lines_from_start_time(self) -> None:
        """A node-numbered line's id is <start ms>-<n>, n counting from 1."""
        v1 = self.client(ids=True)
        self.broadcaster.broadcast([b"a", b"b"])
        self.broadcaster.broadcast([b"c"])
        self.assertEqual(
            v1.messages(), [lid(1) + b" a", lid(2) + b" b", lid(3) + b" c"]
        )

    def test_raw_clients_unchanged(self) -> None:
        """A raw client next to a v1 client gets the lines byte for byte."""
        raw = self.client()
        self.client(ids=True)
        self.broadcaster.broadcast([b"a", b"\xff\xfe"])
        self.assertEqual(
            parse_frames(b"".join(raw.writes)), [(0x81, b"a"), (0x82, b"\xff\xfe")]
        )

    def test_v1_keeps_text_and_binary(self) -> None:
        """``<id> <line>`` is text when the line is UTF-8, else binary."""
        v1 = self.client(ids=True)
        self.broadcaster.broadcast(["é".encode(), b"\xff"])
        frames = parse_frames(b"".join(v1.writes))
        self.assertEqual([opcode for opcode, _ in frames], [0x81, 0x82])
        self.assertEqual(frames[1][1], lid(2) + b" \xff")

    def test_source_ids_are_used(self) -> None:
        """A source with ids of its own (a Redis stream) keeps them."""
        v1 = self.client(ids=True)
        self.broadcaster.broadcast([b"a", b"b"], [b"5-0", b"5-1"])
        self.assertEqual(v1.messages(), [b"5-0 a", b"5-1 b"])
        self.assertEqual(self.history.find(parse_id(b"5-1")), 1)

    def test_one_framing_per_batch_per_mode(self) -> None:
        """Every v1 client gets the very same bytes object for a batch."""
        clients = [self.client(ids=True) for _ in range(3)]
        self.broadcaster.broadcast(numbered(1, 3))
        self.assertEqual(len({id(client.writes[0]) for client in clients}), 1)


class ResumeTests(Fixture):
    def test_exact(self) -> None:
        """A held since: every later line, then !live, then live lines."""
        self.broadcaster.broadcast(numbered(1, 5))
        client = self.client(since=lid(2))
        self.settle()
        self.broadcaster.broadcast(numbered(6, 6))
        self.assertEqual(
            client.messages(), [*with_ids(3, 5), b"!live", *with_ids(6, 6)]
        )
        self.assertEqual(self.broadcaster.resumes_exact, 1)
        self.assertEqual(self.broadcaster.lines_replayed, 3)

    def test_since_the_newest(self) -> None:
        """Resuming at the newest line replays nothing and goes live."""
        self.broadcaster.broadcast(numbered(1, 3))
        client = self.client(since=lid(3))
        self.settle()
        self.assertEqual(client.messages(), [b"!live"])

    def test_evicted(self) -> None:
        """A since older than the history: !gap since oldest, the held lines."""
        self.history.max_lines = 3
        self.broadcaster.broadcast(numbered(1, 5))
        client = self.client(since=lid(1))
        self.settle()
        self.assertEqual(
            client.messages(),
            [b"!gap " + lid(1) + b" " + lid(3), *with_ids(3, 5), b"!live"],
        )
        self.assertEqual(self.broadcaster.resumes_gap, 1)

    def test_earlier_run(self) -> None:
        """An id from an earlier run (an older start time) gets every held line."""
        self.broadcaster.broadcast(numbered(1, 2))
        client = self.client(since=b"1600000000000-99")
        self.settle()
        self.assertEqual(
            client.messages(),
            [b"!gap 1600000000000-99 " + lid(1), *with_ids(1, 2), b"!live"],
        )

    def test_gap_echoes_since_as_given(self) -> None:
        """!gap repeats since exactly as the client wrote it (leading zeros too)."""
        self.broadcaster.broadcast(numbered(1, 1))
        client = self.client(since=b"007-0")
        self.settle()
        self.assertEqual(client.messages()[0], b"!gap 007-0 " + lid(1))

    def test_nothing_held(self) -> None:
        """With an empty history the oldest id is "-"."""
        client = self.client(since=b"1-1")
        self.settle()
        self.assertEqual(client.messages(), [b"!gap 1-1 -", b"!live"])

    def test_future_since(self) -> None:
        """A since newer than every line gets the gap and nothing else."""
        self.broadcaster.broadcast(numbered(1, 2))
        client = self.client(since=b"99999999999999-0")
        self.settle()
        self.assertEqual(
            client.messages(), [b"!gap 99999999999999-0 " + lid(1), b"!live"]
        )

    def test_replay_waits_for_the_client_to_drain(self) -> None:
        """No chunk is written until the client has taken the previous one,
        and lines read meanwhile follow the replay, none lost or repeated."""
        self.history.max_lines = 1000
        big = [b"%05d" % n + b"." * 2000 for n in range(1, 201)]
        self.broadcaster.broadcast(big)
        client = Client()
        client.sink.pauseProducing()
        self.broadcaster.resume(client.sink, lid(0 + 1))
        self.settle()
        first = len(client.writes)
        self.assertLess(sum(map(len, client.writes)), 2 * CHUNK_BYTES)
        self.broadcaster.broadcast([b"late 1"])
        self.settle()
        self.assertEqual(len(client.writes), first)
        for _ in range(100):
            client.sink.resumeProducing()
            self.settle()
            client.sink.pauseProducing()
        self.broadcaster.broadcast([b"late 2"])
        lines = client.messages()
        self.assertEqual(
            lines[:199], [lid(n) + b" " + big[n - 1] for n in range(2, 201)]
        )
        self.assertEqual(
            lines[199:], [lid(201) + b" late 1", b"!live", lid(202) + b" late 2"]
        )

    def test_seam_under_a_continuous_feed(self) -> None:
        """Lines read during every step of a replay arrive once, in order."""
        self.history.max_lines = 10_000
        self.broadcaster.broadcast([b"%d" % n + b"-" * 500 for n in range(1, 1001)])
        client = self.client(since=lid(10))
        n = 1000
        for _ in range(200):
            n += 1
            self.broadcaster.broadcast([b"%d" % n + b"-" * 500])
            self.turn()
        self.settle()
        self.broadcaster.broadcast([b"last"])
        messages = client.messages()
        live = messages.index(b"!live")
        ids = [m.split(b" ", 1)[0] for m in messages if m != b"!live"]
        self.assertEqual(ids, [lid(k) for k in range(11, n + 2)])
        self.assertGreater(len(messages) - 1 - live, 0)

    def test_goes_live_with_a_line_before_every_step(self) -> None:
        """A replay that writes the newest line goes live in that step.

        On a busy node a line arrives before each of a replay's steps; a
        replay that went live only at a step finding nothing new never would.
        """
        self.broadcaster.broadcast(numbered(1, 50))
        client = self.client(since=lid(10))
        for n in range(51, 56):
            self.broadcaster.broadcast([b"line %d" % n])
            self.turn()
        self.broadcaster.broadcast([b"line 56"])
        messages = client.messages()
        self.assertIn(b"!live", messages)
        self.assertEqual(
            [m for m in messages if m != b"!live"],
            [lid(n) + b" line %d" % n for n in range(11, 57)],
        )

    def test_falling_behind_the_history_drops(self) -> None:
        """A replay whose next line was evicted is dropped, not skipped ahead."""
        self.history.max_lines = 50
        self.broadcaster.broadcast([b"x" * 4000 for _ in range(50)])
        client = Client()
        client.sink.pauseProducing()
        self.broadcaster.resume(client.sink, lid(1))
        self.settle()
        self.broadcaster.broadcast([b"y"] * 60)
        client.sink.resumeProducing()
        self.settle()
        self.assertEqual(len(client.dropped), 1)
        self.assertEqual(len(self.broadcaster), 0)
        self.assertNotIn(b"!live", client.messages())

    def test_replays_take_turns(self) -> None:
        """Two replays each write one chunk per reactor turn."""
        self.broadcaster.broadcast([b"z" * 10_000 for _ in range(40)])
        one, two = self.client(since=lid(1)), self.client(since=lid(1))
        self.assertEqual((len(one.writes), len(two.writes)), (0, 0))
        self.turn()
        self.assertEqual((len(one.writes), len(two.writes)), (1, 1))
        self.turn()
        self.assertEqual((len(one.writes), len(two.writes)), (2, 2))

    def test_a_turn_has_a_byte_budget(self) -> None:
        """Once a turn's replays wrote TURN_BYTES, the others wait a turn."""
        self.history.max_bytes = 10**8
        self.broadcaster.broadcast([b"z" * 60_000 for _ in range(40)])
        clients = [self.client(since=lid(1)) for _ in range(40)]
        self.turn()
        first = [sum(map(len, c.writes)) for c in clients]
        chunk = max(first)
        self.assertGreaterEqual(sum(first), TURN_BYTES)
        self.assertLess(sum(first), TURN_BYTES + chunk)
        waited = [c for c, size in zip(clients, first, strict=True) if not size]
        self.assertTrue(waited)
        served = len(clients) - len(waited)
        self.turn()
        # The next turn goes on with those that waited, in order.
        self.assertTrue(all(c.writes for c in waited[:served]))

    def test_a_turn_has_a_time_budget(self) -> None:
        """Steps slower than their bytes suggest end the turn by its time."""
        now = [0.0]
        ran: list[int] = []
        turns = Turns(self.clock, timer=lambda: now[0])

        def step(n: int) -> int:
            ran.append(n)
            now[0] += 0.4 * TURN_SECONDS
            return 1

        for n in range(5):
            turns.soon(lambda n=n: step(n))
        self.turn()
        # Started at 0, 0.4 and 0.8 of the time; the fourth would start past it.
        self.assertEqual(ran, [0, 1, 2])
        self.turn()
        self.assertEqual(ran, [0, 1, 2, 3, 4])

    def test_socket_tails_wait_for_a_turn(self) -> None:
        """Over sockets that take part of each chunk, the replays' bytes are
        all written in turns, within the budget, none by the writable events
        (which only wake the replay); every line arrives once, in order."""
        self.history.max_lines = self.history.max_bytes = 10**8
        lines = [b"%04d" % n + b"z" * 3000 for n in range(1, 401)]
        self.broadcaster.broadcast(lines)
        peers = [Peer(FakeSocket(room=0)) for _ in range(20)]
        for peer in peers:
            self.broadcaster.resume(peer.sink, lid(1))
        for _ in range(10_000):
            if not self.clock.calls:
                break
            for peer in peers:
                peer.socket.room = 20_000
            before = sum(len(p.socket.received) for p in peers)
            self.turn()
            during = sum(len(p.socket.received) for p in peers) - before
            self.assertLessEqual(during, TURN_BYTES + CHUNK_BYTES)
            for peer in peers:
                held = len(peer.socket.received)
                if peer.transport.watched:
                    self.assertIsNone(peer.transport.doWrite())
                self.assertEqual(len(peer.socket.received), held)
                self.assertEqual(peer.sink.unsent, 0)
        expected = [lid(n) + b" " + lines[n - 1] for n in range(2, 401)]
        for peer in peers:
            got = [m for _, m in parse_frames(bytes(peer.socket.received))]
            self.assertEqual(got, [*expected, b"!live"])

    def test_steps_that_write_little_still_count(self) -> None:
        """Replays whose sockets take nothing still share the turn: each
        step counts at least STEP_BYTES, so a turn runs a bounded number."""
        self.broadcaster.broadcast([b"z" * 100 for _ in range(40)])
        peers = [Peer(FakeSocket(room=0)) for _ in range(2 * TURN_BYTES // STEP_BYTES)]
        for peer in peers:
            self.broadcaster.resume(peer.sink, lid(1))

        def steps() -> int:
            return sum(len(peer.socket.calls) for peer in peers)

        self.turn()
        self.assertEqual(steps(), TURN_BYTES // STEP_BYTES)
        self.turn()
        self.assertEqual(steps(), len(peers))

    def test_chunks_framed_once(self) -> None:
        """Clients resuming from nearby ids are written the same framed chunks."""
        self.history.max_lines = 1000
        self.broadcaster.broadcast(numbered(1, 300))
        one, two = self.client(since=lid(3)), self.client(since=lid(10))
        self.settle()
        self.assertEqual(one.messages()[-1], b"!live")
        self.assertEqual(two.messages(), one.messages()[7:])
        shared = {id(w) for w in one.writes} & {id(w) for w in two.writes}
        self.assertGreaterEqual(len(shared), 3)

    def test_closing_cancels_a_replay(self) -> None:
        """A client that leaves mid-replay gets nothing more."""
        self.broadcaster.broadcast([b"z" * 10_000 for _ in range(40)])
        client = self.client(since=lid(1))
        self.broadcaster.remove(client.sink)
        written = len(client.writes)
        self.settle()
        self.assertEqual(len(client.writes), written)
        self.assertEqual(len(self.broadcaster), 0)


class SourceGapTests(Fixture):
    def test_raw_closed_v1_told_before_next_line(self) -> None:
        """Raw clients are closed at once; v1 clients get !gap <last> <next>
        just before the next line."""
        raw, v1 = self.client(), self.client(ids=True)
        self.broadcaster.broadcast(numbered(1, 2))
        self.broadcaster.source_gap()
        self.assertEqual(raw.closed_for_gap, 1)
        self.assertEqual(len(self.broadcaster), 1)
        self.broadcaster.broadcast([b"after"])
        self.assertEqual(
            v1.messages(),
            [*with_ids(1, 2), b"!gap " + lid(2) + b" " + lid(3), lid(3) + b" after"],
        )
        self.assertEqual(self.broadcaster.source_gaps, 1)

    def test_gap_before_any_line(self) -> None:
        """A gap before the first line names no last id: "-"."""
        v1 = self.client(ids=True)
        self.broadcaster.source_gap()
        self.broadcaster.broadcast([b"a"], [b"9-0"])
        self.assertEqual(v1.messages(), [b"!gap - 9-0", b"9-0 a"])

    def test_new_client_not_told(self) -> None:
        """A v1 client that connects after the gap missed nothing: no notice."""
        self.broadcaster.broadcast(numbered(1, 1))
        self.broadcaster.source_gap()
        late = self.client(ids=True)
        self.broadcaster.broadcast(numbered(2, 2))
        self.assertEqual(late.messages(), with_ids(2, 2))

    def test_replay_across_a_gap(self) -> None:
        """A replay that crosses the place of a gap tells it there."""
        self.broadcaster.broadcast(numbered(1, 2))
        self.broadcaster.source_gap()
        self.broadcaster.broadcast(numbered(3, 3))
        client = self.client(since=lid(1))
        self.settle()
        self.assertEqual(
            client.messages(),
            [
                *with_ids(2, 2),
                b"!gap " + lid(2) + b" " + lid(3),
                *with_ids(3, 3),
                b"!live",
            ],
        )

    def test_replay_reaching_a_fresh_gap(self) -> None:
        """A replay that catches up after a gap but before the next line is
        told with the live clients."""
        self.broadcaster.broadcast(numbered(1, 2))
        self.broadcaster.source_gap()
        client = self.client(since=lid(1))
        self.settle()
        self.broadcaster.broadcast(numbered(3, 3))
        self.assertEqual(
            client.messages(),
            [
                *with_ids(2, 2),
                b"!live",
                b"!gap " + lid(2) + b" " + lid(3),
                *with_ids(3, 3),
            ],
        )


@dataclass
class Slice:
    held: bool
    oldest: bytes | None
    entries: list[tuple[bytes, bytes]] = field(default_factory=list)


class FakeArchive:
    """A stream holding ids 1-0 .. N-0, read after any id."""

    def __init__(self, count: int, last_read: int | None = None) -> None:
        self.ids = [b"%d-0" % n for n in range(1, count + 1)]
        self.last_read = None if last_read is None else b"%d-0" % last_read
        self.asked: list[bytes] = []
        self.pending: Deferred[Slice] | None = None

    def read_after(self, since: bytes, count: int) -> Deferred[Slice]:
        self.asked.append(since)
        k = parse_id(since)
        later = [i for i in self.ids if parse_id(i) > k][:count]
        result = Slice(
            held=since in self.ids,
            oldest=self.ids[0] if self.ids else None,
            entries=[(i, b"s" + i) for i in later],
        )
        return succeed(result)


class ArchiveTests(Fixture):
    def test_older_than_the_history(self) -> None:
        """The archive serves what the history no longer holds, the history
        the rest, with nothing repeated where they meet."""
        archive = FakeArchive(600)
        self.broadcaster.archive = archive
        self.history.max_lines = 100
        for n in range(1, 601):
            self.broadcaster.broadcast([b"s%d-0" % n], [b"%d-0" % n])
        client = self.client(since=b"3-0")
        self.settle()
        messages = client.messages()
        self.assertEqual(messages[-1], b"!live")
        expected = [b"%d-0 s%d-0" % (n, n) for n in range(4, 601)]
        self.assertEqual(messages[:-1], expected)
        self.assertEqual(self.broadcaster.resumes_exact, 1)

    def test_not_in_the_stream_either(self) -> None:
        """A since neither holds: !gap with the older of the two oldest ids."""
        archive = FakeArchive(10)
        archive.ids = archive.ids[4:]
        self.broadcaster.archive = archive
        self.history.max_lines = 2
        for n in range(1, 11):
            self.broadcaster.broadcast([b"s%d-0" % n], [b"%d-0" % n])
        client = self.client(since=b"2-0")
        self.settle()
        messages = client.messages()
        self.assertEqual(messages[0], b"!gap 2-0 5-0")
        self.assertEqual(messages[1:-1], [b"%d-0 s%d-0" % (n, n) for n in range(5, 11)])

    def test_empty_history_stops_where_the_source_read(self) -> None:
        """With no history, archive entries the source has not read yet are
        left to come live, not replayed."""
        archive = FakeArchive(20, last_read=15)
        self.broadcaster.archive = archive
        self.history.max_lines = 0
        client = self.client(since=b"10-0")
        self.settle()
        self.assertEqual(
            client.messages(),
            [*(b"%d-0 s%d-0" % (n, n) for n in range(11, 16)), b"!live"],
        )
        self.assertEqual(format_key(parse_id(archive.asked[0])), b"10-0")

    def test_history_evicting_behind_archive_entries(self) -> None:
        """Lines the history evicts while archive entries wait for the client
        to drain are not skipped where the history takes over: they come
        from the archive too."""
        archive = FakeArchive(360, last_read=300)
        self.broadcaster.archive = archive
        for n in range(1, 301):
            self.broadcaster.broadcast([b"s%d-0" % n], [b"%d-0" % n])
        client = Client()
        client.sink.pauseProducing()
        self.broadcaster.resume(client.sink, b"3-0")
        self.settle()
        archive.last_read = b"360-0"
        self.broadcaster.broadcast(
            [b"s%d-0" % n for n in range(301, 361)],
            [b"%d-0" % n for n in range(301, 361)],
        )
        client.sink.resumeProducing()
        self.settle()
        self.assertEqual(client.dropped, [])
        self.assertEqual(
            client.messages(),
            [*(b"%d-0 s%d-0" % (n, n) for n in range(4, 361)), b"!live"],
        )

    def test_stream_trimmed_past_the_replay_drops(self) -> None:
        """If the stream lets go of the last line a replay sent from it before
        the next read, what followed may be gone too: the client is dropped
        (it may resume and is told of the gap), never silently short."""
        archive = FakeArchive(600, last_read=600)
        self.broadcaster.archive = archive
        for n in range(1, 601):
            self.broadcaster.broadcast([b"s%d-0" % n], [b"%d-0" % n])
        client = Client()
        client.sink.pauseProducing()
        self.broadcaster.resume(client.sink, b"3-0")
        self.settle()
        archive.ids = archive.ids[300:]
        client.sink.resumeProducing()
        self.settle()
        self.assertEqual(len(client.dropped), 1)
        messages = client.messages()
        self.assertEqual(messages[-1], b"259-0 s259-0")
        self.assertNotIn(b"!live", messages)

    def test_lagging_node_waits_for_the_resume_position(self) -> None:
        """A client resuming at an id this node has not read yet (another node
        is ahead) goes live only once this node has read past it: the lines
        up to its position are not sent again."""
        archive = FakeArchive(20, last_read=10)
        self.broadcaster.archive = archive
        for n in range(1, 11):
            self.broadcaster.broadcast([b"s%d-0" % n], [b"%d-0" % n])
        client = self.client(since=b"15-0")
        self.settle()
        self.assertEqual(client.messages(), [])
        for first in (11, 14, 17):
            batch = range(first, first + 3)
            archive.last_read = b"%d-0" % batch[-1]
            self.broadcaster.broadcast(
                [b"s%d-0" % n for n in batch], [b"%d-0" % n for n in batch]
            )
            self.settle()
        archive.last_read = b"20-0"
        self.broadcaster.broadcast([b"s20-0"], [b"20-0"])
        self.settle()
        self.assertEqual(
            client.messages(),
            [
                b"16-0 s16-0",
                b"!live",
                *(b"%d-0 s%d-0" % (n, n) for n in range(17, 21)),
            ],
        )
        self.assertEqual(self.broadcaster.resumes_exact, 1)

    def test_lagging_node_reads_past_its_history(self) -> None:
        """While a waiting client's position is read in one batch larger than
        the history, the lines after it that the history evicted are not
        skipped: they come from the archive."""
        archive = FakeArchive(300, last_read=10)
        self.broadcaster.archive = archive
        self.history.max_lines = 50
        for n in range(1, 11):
            self.broadcaster.broadcast([b"s%d-0" % n], [b"%d-0" % n])
        client = self.client(since=b"15-0")
        self.settle()
        archive.last_read = b"300-0"
        batch = range(11, 301)
        self.broadcaster.broadcast(
            [b"s%d-0" % n for n in batch], [b"%d-0" % n for n in batch]
        )
        self.settle()
        self.assertEqual(client.dropped, [])
        self.assertEqual(
            client.messages(),
            [*(b"%d-0 s%d-0" % (n, n) for n in range(16, 301)), b"!live"],
        )

    def test_lagging_node_without_history_serves_the_rest_from_the_stream(
        self,
    ) -> None:
        """With no history, the lines read in the batch that passed a waiting
        client's position come from the stream before ``!live``."""
        archive = FakeArchive(20, last_read=10)
        self.broadcaster.archive = archive
        self.history.max_lines = 0
        client = self.client(since=b"15-0")
        self.settle()
        archive.last_read = b"18-0"
        batch = range(11, 19)
        self.broadcaster.broadcast(
            [b"s%d-0" % n for n in batch], [b"%d-0" % n for n in batch]
        )
        self.settle()
        self.broadcaster.broadcast([b"s19-0"], [b"19-0"])
        self.assertEqual(
            client.messages(),
            [*(b"%d-0 s%d-0" % (n, n) for n in range(16, 19)), b"!live", b"19-0 s19-0"],
        )


class LateArchive(FakeArchive):
    """Answers each read as the stream was when asked, once told to."""

    def __init__(self, count: int, last_read: int | None = None) -> None:
        super().__init__(count, last_read)
        self.answers: list[tuple[Deferred[Slice], Slice]] = []

    def read_after(self, since: bytes, count: int) -> Deferred[Slice]:
        answer = self.successResultOf(super().read_after(since, count))
        d: Deferred[Slice] = Deferred()
        self.answers.append((d, answer))
        return d

    def successResultOf(self, d: Deferred[Slice]) -> Slice:
        found: list[Slice] = []
        d.addCallback(found.append)
        return found[0]

    def answer(self) -> None:
        d, answer = self.answers.pop(0)
        d.callback(answer)


class ArchiveRaceTests(Fixture):
    def test_lines_read_while_the_archive_answers(self) -> None:
        """Without a history, lines the source reads while an archive read
        is under way, past the end that read saw, are fetched again, not
        lost at the seam."""
        archive = LateArchive(12, last_read=10)
        self.broadcaster.archive = archive
        self.history.max_lines = 0
        client = self.client(since=b"5-0")
        # The stream grows and the source reads on before the answer comes.
        archive.ids += [b"%d-0" % n for n in range(13, 16)]
        archive.last_read = b"15-0"
        batch = range(11, 16)
        self.broadcaster.broadcast(
            [b"s%d-0" % n for n in batch], [b"%d-0" % n for n in batch]
        )
        archive.answer()
        self.settle()
        self.assertEqual(len(archive.answers), 1, "asked again")
        archive.answer()
        self.settle()
        self.broadcaster.broadcast([b"s16-0"], [b"16-0"])
        self.assertEqual(
            client.messages(),
            [*(b"%d-0 s%d-0" % (n, n) for n in range(6, 16)), b"!live", b"16-0 s16-0"],
        )
