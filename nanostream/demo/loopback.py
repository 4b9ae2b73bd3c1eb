"""Whether a server endpoint string only accepts connections from this host.

``--demo`` hands a token to anyone who loads its page, so by default it may
only listen where nobody else can reach: a loopback interface or a unix
socket.  Anything this cannot prove local (no interface, ``systemd:``, an
endpoint plugin) counts as reachable.
"""

from __future__ import annotations

import ipaddress

#: Where each endpoint type takes its interface as a positional argument
#: (after the port), as Twisted's parsers define them.
_INTERFACE_POSITION = {"tcp": 1, "tcp6": 2, "ssl": 4}

_LOCAL_NAMES = {"localhost", "localhost.", "ip6-localhost"}


def parse_description(description: str) -> tuple[str, list[str], dict[str, str]]:
    """Split an endpoint string as Twisted does: ``:`` between arguments,
    ``=`` between a keyword and its value, ``\\`` escaping the next character.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    current = ""
    key: str | None = None
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current += next(chars, "")
        elif char == ":":
            if key is None:
                args.append(current)
            else:
                kwargs[key] = current
            current, key = "", None
        elif char == "=" and key is None:
            key, current = current, ""
        else:
            current += char
    if key is None:
        args.append(current)
    else:
        kwargs[key] = current
    return args[0].lower(), args[1:], kwargs


def is_loopback_address(host: str) -> bool:
    """``127.0.0.0/8``, ``::1``, ``::ffff:127.0.0.1`` or the name localhost."""
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def is_loopback_endpoint(description: str) -> bool:
    """True only when the endpoint provably listens on this host alone."""
    kind, args, kwargs = parse_description(description)
    if kind == "unix":
        return True
    position = _INTERFACE_POSITION.get(kind)
    if position is None:
        return False
    interface = kwargs.get("interface")
    if interface is None and len(args) > position:
        interface = args[position]
    return interface is not None and is_loopback_address(interface)
