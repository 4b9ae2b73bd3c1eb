"""Where the HS256 key comes from: exactly one of option, file or environment."""

from __future__ import annotations

from collections.abc import Mapping

ENV_VAR = "NANOSTREAM_SECRET"


class SecretError(ValueError):
    """The key cannot be had; the message names the problem, never the key."""


def strip_newline(raw: bytes) -> bytes:
    """A file's trailing newline (``\\n`` or ``\\r\\n``) is not part of the key."""
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith(b"\n"):
        return raw[:-1]
    return raw


def read_secret_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SecretError(f"cannot read secret file {path}: {e.strerror}") from None
    secret = strip_newline(raw)
    if not secret:
        raise SecretError(f"secret file {path} is empty")
    return secret


def load_secret(
    secret: str | None, secret_file: str | None, environ: Mapping[str, str]
) -> bytes:
    """The key from whichever single source was given."""
    from_env = environ.get(ENV_VAR)
    given = [
        name
        for name, value in (
            ("--secret", secret),
            ("--secret-file", secret_file),
            (ENV_VAR, from_env),
        )
        if value is not None
    ]
    if not given:
        raise SecretError(
            f"a secret is required: give --secret-file, --secret or {ENV_VAR}"
            " (or --no-auth to run without tokens)"
        )
    if len(given) > 1:
        raise SecretError(f"give exactly one secret source, not {' and '.join(given)}")
    if secret_file is not None:
        return read_secret_file(secret_file)
    value = secret if secret is not None else from_env
    assert value is not None
    if not value:
        raise SecretError(f"the secret from {given[0]} is empty")
    return value.encode("utf-8")
