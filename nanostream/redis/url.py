"""Redis URLs: where a Redis is, how to reach it, and how to log it safely.

``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?channel=NAME|?stream=KEY]``,
or ``rediss://`` for TLS (with ``ca=PEM`` to trust a private CA instead of the
system's).  Parsed once at start-up, so a typo is a usage error rather than a
reconnect loop; the password travels apart from everything that is logged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)

from nanostream.auth.secret import strip_newline

DEFAULT_PORT = 6379
SCHEMES = ("redis", "rediss")

#: Shown instead of a password wherever a URL is logged or printed.
MASK = "***"


class RedisURLError(ValueError):
    """A Redis URL that cannot be used; the message never holds the password."""


@dataclass(frozen=True)
class RedisTarget:
    """One parsed Redis URL."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    tls: bool = False
    channel: str | None = None
    stream: str | None = None
    """The key of a Redis stream, for a URL given ``?stream=KEY``."""
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ca: str | None = None
    """PEM file of CA certificates to trust for ``rediss://``."""

    def with_password(self, password: str) -> RedisTarget:
        return dataclasses.replace(self, password=password)

    def masked(self) -> str:
        """The URL as it may be logged: any password replaced by ``***``."""
        scheme = "rediss" if self.tls else "redis"
        userinfo = ""
        if self.username is not None or self.password is not None:
            user = quote(self.username or "", safe="")
            userinfo = f"{user}:{MASK}@" if self.password is not None else f"{user}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = []
        if self.channel is not None:
            query.append(f"channel={quote(self.channel, safe='')}")
        if self.stream is not None:
            query.append(f"stream={quote(self.stream, safe='')}")
        if self.ca is not None:
            query.append(f"ca={quote(self.ca, safe='/')}")
        tail = "?" + "&".join(query) if query else ""
        return f"{scheme}://{userinfo}{host}:{self.port}/{self.db}{tail}"

    def __str__(self) -> str:
        return self.masked()

    def endpoint(self, reactor: object, timeout: float = 5.0) -> IStreamClientEndpoint:
        """A client endpoint to this Redis, over TLS for ``rediss://``."""
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, self.host, self.port, timeout=timeout
        )
        if self.tls:
            endpoint = wrapClientTLS(self._tls_options(), endpoint)
        return endpoint

    def _tls_options(self) -> IOpenSSLClientConnectionCreator:
        if self.ca is None:
            return optionsForClientTLS(self.host)
        with open(self.ca, "rb") as f:
            pem = f.read()
        roots = trustRootFromCertificates(
            [Certificate.loadPEM(block) for block in _pem_blocks(pem)]
        )
        return optionsForClientTLS(self.host, trustRoot=roots)


def _pem_blocks(pem: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in pem.split(end) if b"-----BEGIN" in block]


def parse_redis_url(text: str, *, channel: bool, stream: bool = False) -> RedisTarget:
    """Parse ``text``; ``channel`` and ``stream`` say what it must name.

    ``channel`` alone requires ``?channel=NAME``, ``stream`` alone
    ``?stream=KEY``, both together exactly one of the two (the publisher
    writes to either).  Where neither is wanted (the ledger), giving one is
    an error: it would mean the operator mixed up two options.
    """
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise RedisURLError("a Redis URL starts with redis:// or rediss://")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        if colon:
            password = unquote(secret)
    host, port = _host_port(hostport)
    db = _db(parts.path)
    query = _query(parts.query)
    name = query.pop("channel", None)
    key = query.pop("stream", None)
    ca = query.pop("ca", None)
    if query:
        # Not echoed: a mistyped URL may have cut a password anywhere.
        raise RedisURLError(
            "the Redis URL has an unknown parameter "
            "(it takes channel=, stream= and ca=)"
        )
    _check_names(name, key, channel=channel, stream=stream)
    if ca is not None and scheme != "rediss":
        raise RedisURLError("ca= only applies to rediss:// (TLS) URLs")
    if ca is not None:
        try:
            with open(ca, "rb") as f:
                pem = f.read()
        except OSError as e:
            raise RedisURLError(f"cannot read CA file {ca}: {e.strerror}") from None
        if not _pem_blocks(pem):
            raise RedisURLError(f"CA file {ca} holds no PEM certificate")
    return RedisTarget(
        host=host,
        port=port,
        db=db,
        tls=scheme == "rediss",
        channel=name or None,
        stream=key or None,
        username=username,
        password=password,
        ca=ca,
    )


def _check_names(
    name: str | None, key: str | None, *, channel: bool, stream: bool
) -> None:
    """An empty ``channel=`` or ``stream=`` counts as none."""
    if name and key:
        raise RedisURLError(
            "the Redis URL names a channel and a stream: give one of "
            "?channel=NAME and ?stream=KEY"
        )
    if channel and stream:
        if not name and not key:
            raise RedisURLError(
                "the Redis URL names no channel or stream: add ?channel=NAME "
                "(pub/sub) or ?stream=KEY (a Redis stream)"
            )
        return
    if channel and not name:
        raise RedisURLError("the Redis URL names no channel: add ?channel=NAME")
    if stream and not key:
        raise RedisURLError("the Redis URL names no stream: add ?stream=KEY")
    if not channel and name is not None:
        raise RedisURLError("this Redis URL takes no channel")
    if not stream and key is not None:
        raise RedisURLError("this Redis URL takes no stream")


def _host_port(hostport: str) -> tuple[str, int]:
    """Errors here never echo the text: it may hold a cut-off password."""
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise RedisURLError("the Redis URL has a malformed IPv6 address")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = hostport.partition(":")
        if not colon:
            port_text = None
    if not host:
        raise RedisURLError("the Redis URL names no host")
    if port_text is None or port_text == "":
        if port_text == "":
            raise RedisURLError("the Redis URL has an empty port")
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RedisURLError("bad port in the Redis URL: give a number from 1 to 65535")
    return host, int(port_text)


def _db(path: str) -> int:
    number = path.strip("/")
    if not number:
        return 0
    if not number.isdigit():
        raise RedisURLError("bad database number in the Redis URL: give /0, /1, ...")
    return int(number)


def _query(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise RedisURLError("the Redis URL has a malformed query") from None
    result: dict[str, str] = {}
    for key, value in pairs:
        if key in result:
            raise RedisURLError("the Redis URL gives a parameter twice")
        result[key] = value
    return result


def read_password_file(path: str) -> str:
    """A Redis password from a file; its trailing newline is not part of it."""
    try:
        secret = strip_newline(_read(path)).decode("utf-8")
    except OSError as e:
        raise RedisURLError(
            f"cannot read Redis password file {path}: {e.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise RedisURLError(f"Redis password file {path} is not UTF-8") from None
    if not secret:
        raise RedisURLError(f"Redis password file {path} is empty")
    return secret


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def resolve(
    text: str, *, channel: bool, password_file: str | None, stream: bool = False
) -> RedisTarget:
    """Parse a URL and give it the password from ``password_file``, if any.

    ``channel`` and ``stream`` say what the URL must name, as for
    :func:`parse_redis_url`.
    """
    target = parse_redis_url(text, channel=channel, stream=stream)
    if password_file is not None:
        if target.password is not None:
            raise RedisURLError(
                "the Redis URL holds a password and --redis-password-file gives "
                "another: use one"
            )
        target = target.with_password(read_password_file(password_file))
    if target.username is not None and target.password is None:
        raise RedisURLError("the Redis URL names a user but no password")
    return target
