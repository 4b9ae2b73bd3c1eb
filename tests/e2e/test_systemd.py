"""contrib/systemd: the units pass ``systemd-analyze verify``, and the
service's own ``ExecStart=`` line runs nanostream on a socket handed over the
way systemd hands it (``LISTEN_FDS``, descriptor 3), with the secret read from
a credentials directory."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase
from websockets.sync.client import ClientConnection, connect

from .harness import (
    EVENT_TIMEOUT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Address,
    LogReader,
    close_code,
    mint,
    new_secret,
    receive,
    stop_process,
)

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
TWIST = str(Path(sys.executable).with_name("twist"))
INSTALLED_TWIST = "/opt/nanostream/bin/twist"

#: Put a listening socket at descriptor 3 and announce it as systemd does
#: (LISTEN_FDNAMES defaults to the socket unit's name), then become the
#: command: LISTEN_PID must be the pid that reads them.
_ACTIVATE = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "os.dup2(fd, 3)\n"
    "os.close(fd)\n"
    "os.environ.update(\n"
    "    LISTEN_FDS='1',\n"
    "    LISTEN_FDNAMES='nanostream.socket',\n"
    "    LISTEN_PID=str(os.getpid()),\n"
    ")\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def exec_start(unit: Path) -> list[str]:
    """The ``ExecStart=`` command of ``unit``, continuation lines joined."""
    text = re.sub(r"\\\n", " ", unit.read_text())
    [line] = re.findall(r"^ExecStart=(.*)$", text, re.M)
    return shlex.split(line)


class UnitFileTests(SynchronousTestCase):
    """What systemd itself says of the unit files."""

    def test_units_verify(self) -> None:
        """systemd-analyze verify finds nothing wrong with any of the units."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        directory = Path(tempfile.mkdtemp(prefix="ns-units-"))
        self.addCleanup(shutil.rmtree, directory)
        names = ["nanostream.socket", "nanostream.service", "nanostream-tls.service"]
        for name in names:
            text = (UNITS / name).read_text().replace(INSTALLED_TWIST, TWIST)
            (directory / name).write_text(text)
        done = subprocess.run(
            [analyze, "verify", *names],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual((done.returncode, done.stdout + done.stderr), (0, ""))

    def test_service_uses_the_socket_and_credential(self) -> None:
        """The service takes its listener from systemd and its secret from
        LoadCredential=, and restarts on failure as a dedicated user."""
        service = (UNITS / "nanostream.service").read_text()
        command = exec_start(UNITS / "nanostream.service")
        self.assertIn("systemd:domain=INET:index=0", command)
        self.assertIn("${CREDENTIALS_DIRECTORY}/secret", command)
        self.assertIn("LoadCredential=secret:", service)
        self.assertIn("Restart=on-failure", service)
        self.assertIn("StateDirectory=nanostream", service)
        self.assertIn("/var/lib/nanostream/used-tokens", command)
        self.assertRegex(service, r"(?m)^User=nanostream$")
        self.assertIn(
            "ListenStream=0.0.0.0:8080", (UNITS / "nanostream.socket").read_text()
        )


class UnitCommandTestCase(SynchronousTestCase):
    """Runs a unit's ExecStart here: credentials, runtime directory and the
    installed ``twist`` replaced by this test's folders and the venv's."""

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="ns-sd-"))
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.credentials = self.directory / "credentials"
        self.runtime = self.directory / "run"
        self.state = self.directory / "state"
        self.credentials.mkdir(mode=0o700)
        self.runtime.mkdir(mode=0o750)
        self.state.mkdir(mode=0o700)
        self.secret = new_secret()
        (self.credentials / "secret").write_text(self.secret + "\n")
        self.clients: list[ClientConnection] = []
        self.addCleanup(self.close_clients)

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()

    def command(self, unit: str, **replace: str) -> list[str]:
        """ExecStart of ``unit`` with this machine's paths (and ``replace``)."""
        paths = {
            INSTALLED_TWIST: TWIST,
            "${CREDENTIALS_DIRECTORY}": str(self.credentials),
            "/run/nanostream": str(self.runtime),
            "/var/lib/nanostream": str(self.state),
            **replace,
        }
        replaced = []
        for argument in exec_start(UNITS / unit):
            for old, new in paths.items():
                argument = argument.replace(old, new)
            replaced.append(argument)
        return replaced

    def spawn(
        self, argv: list[str], pass_fds: tuple[int, ...] = ()
    ) -> tuple[subprocess.Popen[bytes], LogReader]:
        """Start ``argv``; return it once both of its listeners are up."""
        env = {k: v for k, v in os.environ.items() if k != "NANOSTREAM_SECRET"}
        process = subprocess.Popen(
            argv,
            pass_fds=pass_fds,
            cwd=self.directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(self.stop, process)
        assert process.stdout is not None
        log = LogReader(process.stdout, "twist")
        self.listening = log.wait_for(
            r"websocket listening on (\S+)", timeout=START_TIMEOUT
        ).group(1)
        log.wait_for(r"source listening on unix:", timeout=START_TIMEOUT)
        return process, log

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        stop_process(process, STOP_TIMEOUT)

    def connect(self, url: str, tls: ssl.SSLContext | None = None) -> ClientConnection:
        client = connect(
            f"{url}?t={mint(self.secret)}",
            ssl=tls,
            open_timeout=EVENT_TIMEOUT,
            close_timeout=EVENT_TIMEOUT,
            ping_interval=None,
            proxy=None,
            legacy=True,
        )
        self.clients.append(client)
        return client

    def produce(self, data: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as producer:
            producer.settimeout(EVENT_TIMEOUT)
            producer.connect(str(self.runtime / "in.sock"))
            producer.sendall(data)


class SocketActivationTests(UnitCommandTestCase):
    """nanostream.service's command line, run on an inherited socket."""

    def activate(self) -> tuple[subprocess.Popen[bytes], LogReader, int]:
        """Start the command on a listening socket bound here, as systemd would."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        activate = [sys.executable, "-c", _ACTIVATE, str(listener.fileno())]
        with listener:
            process, log = self.spawn(
                [*activate, *self.command("nanostream.service")],
                pass_fds=(listener.fileno(),),
            )
        self.assertEqual(self.listening, f"systemd:127.0.0.1:{port}")
        return process, log, port

    def test_inherited_socket_serves_clients(self) -> None:
        """On an inherited socket the service admits clients, relays a
        producer's lines from its runtime directory, and stops on SIGTERM."""
        process, log, port = self.activate()
        source = self.runtime / "in.sock"
        self.assertEqual(source.stat().st_mode & 0o777, 0o660)

        client = self.connect(f"ws://127.0.0.1:{port}/")
        self.produce(b"activated\n")
        self.assertEqual(receive(client, 1), ["activated"])

        process.send_signal(signal.SIGTERM)
        self.assertEqual(close_code(client), 1001)
        # 0, not death by SIGTERM: systemd, and anything else, sees a clean stop.
        self.assertEqual(process.wait(STOP_TIMEOUT), 0)
        # The used token went to the state directory's ledger file.
        self.assertGreater((self.state / "used-tokens").stat().st_size, 0)
        log.join(STOP_TIMEOUT)
        self.assertNotIn(self.secret, log.text())
        self.assertNotIn("Traceback", log.text())


class TlsUnitTests(UnitCommandTestCase):
    """nanostream-tls.service's command line with a CA, an intermediate and
    a server certificate, as a public CA issues them."""

    def setUp(self) -> None:
        super().setUp()
        self.root = certificate_chain(self.credentials)
        self.trusting_root = ssl.create_default_context(cafile=str(self.root))

    def start_tls(self, listen: str | None = None) -> str:
        """Run the unit on a free loopback port; the wss:// URL it serves."""
        replace = {"ssl:443:": "ssl:0:interface=127.0.0.1:"}
        command = self.command("nanostream-tls.service", **replace)
        if listen is not None:
            command[command.index("--listen") + 1] = listen
        self.spawn(command)
        address = Address.parse(self.listening)
        self.assertEqual(address.kind, "ssl")
        return f"wss://localhost:{address.port}/"

    def test_full_chain_verifies(self) -> None:
        """With extraCertChain a client trusting only the root CA connects."""
        url = self.start_tls()
        client = self.connect(url, self.trusting_root)
        self.produce(b"over tls\n")
        self.assertEqual(receive(client, 1), ["over tls"])

    def test_cert_key_alone_sends_no_intermediate(self) -> None:
        """certKey=fullchain.pem alone serves only its first certificate, so
        the chain does not verify: extraCertChain is what sends the rest."""
        credentials = self.credentials
        url = self.start_tls(
            f"ssl:0:interface=127.0.0.1:privateKey={credentials}/tls-key"
            f":certKey={credentials}/fullchain.pem"
        )
        e = self.assertRaises(
            ssl.SSLCertVerificationError, self.connect, url, self.trusting_root
        )
        self.assertIn("unable to get local issuer certificate", str(e))


def certificate_chain(directory: Path) -> Path:
    """Write a root CA, an intermediate and a leaf for localhost/127.0.0.1.

    ``tls-key``, ``tls-cert`` (the leaf), ``tls-chain`` (the intermediate)
    and ``fullchain.pem`` (both) follow Let's Encrypt's layout; the root's
    path is returned for clients to trust.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        issuer_key: ec.EllipticCurvePrivateKey,
        ca: bool,
        path_length: int | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.BasicConstraints(ca=ca, path_length=path_length),
                critical=True,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not ca,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
        return builder.sign(issuer_key, hashes.SHA256())

    def pem(certificate: x509.Certificate) -> bytes:
        return certificate.public_bytes(serialization.Encoding.PEM)

    root_key = ec.generate_private_key(ec.SECP256R1())
    middle_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = issue(
        "test root CA", root_key, "test root CA", root_key, ca=True, path_length=1
    )
    middle = issue(
        "test intermediate CA",
        middle_key,
        "test root CA",
        root_key,
        ca=True,
        path_length=0,
    )
    leaf = issue("localhost", leaf_key, "test intermediate CA", middle_key, ca=False)

    (directory / "tls-key").write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "tls-cert").write_bytes(pem(leaf))
    (directory / "tls-chain").write_bytes(pem(middle))
    (directory / "fullchain.pem").write_bytes(pem(leaf) + pem(middle))
    root_path = directory / "root.pem"
    root_path.write_bytes(pem(root))
    return root_path
