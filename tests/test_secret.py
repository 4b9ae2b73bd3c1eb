"""Where the key comes from: exactly one source, never echoed in an error."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth.secret import (
    ENV_VAR,
    SecretError,
    load_secret,
    read_secret_file,
    strip_newline,
)

KEY = "s3cr3t-value-that-must-never-be-echoed"


def temp_path(case: SynchronousTestCase) -> str:
    """A fresh path in a directory removed when the test ends."""
    directory = tempfile.mkdtemp(prefix="nanostream-test-")
    case.addCleanup(shutil.rmtree, directory)
    return os.path.join(directory, "secret")


class StripNewlineTests(SynchronousTestCase):
    def test_lf(self) -> None:
        """One trailing ``\\n`` is removed."""
        self.assertEqual(strip_newline(b"key\n"), b"key")

    def test_crlf(self) -> None:
        """One trailing ``\\r\\n`` is removed."""
        self.assertEqual(strip_newline(b"key\r\n"), b"key")

    def test_only_once(self) -> None:
        """Only the last line ending goes: the rest is part of the key."""
        self.assertEqual(strip_newline(b"key\n\n"), b"key\n")
        self.assertEqual(strip_newline(b"key\r\n\r\n"), b"key\r\n")

    def test_lone_cr_kept(self) -> None:
        """A trailing ``\\r`` without ``\\n`` is key material."""
        self.assertEqual(strip_newline(b"key\r"), b"key\r")

    def test_no_newline(self) -> None:
        """A key without a trailing newline is unchanged, inner newlines too."""
        self.assertEqual(strip_newline(b"k\ney"), b"k\ney")


class SecretFileTests(SynchronousTestCase):
    def write(self, content: bytes) -> str:
        path = temp_path(self)
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_reads_and_strips(self) -> None:
        """A file's content without its trailing newline is the key."""
        self.assertEqual(read_secret_file(self.write(b"key\r\n")), b"key")

    def test_binary_key(self) -> None:
        """Any bytes, UTF-8 or not, make a key."""
        self.assertEqual(read_secret_file(self.write(b"\xff\x00k\n")), b"\xff\x00k")

    def test_empty_file(self) -> None:
        """An empty file is an error naming the file."""
        path = self.write(b"")
        e = self.assertRaises(SecretError, read_secret_file, path)
        self.assertEqual(str(e), f"secret file {path} is empty")

    def test_newline_only(self) -> None:
        """A file holding only a newline is as empty as an empty one."""
        path = self.write(b"\r\n")
        e = self.assertRaises(SecretError, read_secret_file, path)
        self.assertEqual(str(e), f"secret file {path} is empty")

    def test_missing_file(self) -> None:
        """A missing file is an error naming the file and the cause."""
        path = temp_path(self)
        e = self.assertRaises(SecretError, read_secret_file, path)
        self.assertEqual(
            str(e), f"cannot read secret file {path}: No such file or directory"
        )
        self.assertIsNone(e.__cause__)

    def test_directory(self) -> None:
        """A path that cannot be read as a file is an error, not a crash."""
        path = temp_path(self)
        os.mkdir(path)
        e = self.assertRaises(SecretError, read_secret_file, path)
        self.assertEqual(str(e), f"cannot read secret file {path}: Is a directory")


class LoadSecretTests(SynchronousTestCase):
    def test_option(self) -> None:
        """--secret alone gives its UTF-8 bytes."""
        self.assertEqual(load_secret("clé", None, {}), "clé".encode())

    def test_environment(self) -> None:
        """The environment variable alone gives the key."""
        self.assertEqual(load_secret(None, None, {ENV_VAR: KEY}), KEY.encode())

    def test_file(self) -> None:
        """--secret-file alone gives the file's key."""
        path = temp_path(self)
        with open(path, "wb") as f:
            f.write(KEY.encode() + b"\n")
        self.assertEqual(load_secret(None, path, {}), KEY.encode())

    def test_other_environment_ignored(self) -> None:
        """Unrelated environment variables are not a source."""
        e = self.assertRaises(SecretError, load_secret, None, None, {"SECRET": KEY})
        self.assertIn("a secret is required", str(e))

    def test_none(self) -> None:
        """No source is an error naming every way to give one."""
        e = self.assertRaises(SecretError, load_secret, None, None, {})
        for name in ("--secret-file", "--secret", ENV_VAR, "--no-auth"):
            self.assertIn(name, str(e))

    def test_two_sources(self) -> None:
        """Any two sources at once are an error naming both, not their values."""
        path = temp_path(self)
        for args, names in (
            ((KEY, path, {}), "--secret and --secret-file"),
            ((KEY, None, {ENV_VAR: KEY}), f"--secret and {ENV_VAR}"),
            ((None, path, {ENV_VAR: KEY}), f"--secret-file and {ENV_VAR}"),
            ((KEY, path, {ENV_VAR: KEY}), f"--secret and --secret-file and {ENV_VAR}"),
        ):
            with self.subTest(names):
                e = self.assertRaises(SecretError, load_secret, *args)
                self.assertEqual(str(e), f"give exactly one secret source, not {names}")
                self.assertNotIn(KEY, str(e))

    def test_empty_values(self) -> None:
        """An empty --secret or environment value is an error naming its source."""
        e = self.assertRaises(SecretError, load_secret, "", None, {})
        self.assertEqual(str(e), "the secret from --secret is empty")
        e = self.assertRaises(SecretError, load_secret, None, None, {ENV_VAR: ""})
        self.assertEqual(str(e), f"the secret from {ENV_VAR} is empty")

    def test_empty_environment_counts_as_a_source(self) -> None:
        """A set but empty variable still conflicts with another source."""
        e = self.assertRaises(SecretError, load_secret, KEY, None, {ENV_VAR: ""})
        self.assertIn("exactly one", str(e))
