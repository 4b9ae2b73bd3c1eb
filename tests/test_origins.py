"""The ``--origin`` allow-list: wildcards that cannot leave the host name."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth.origins import OriginPolicy


class OriginPolicyTestCase(SynchronousTestCase):
    def assertAdmits(self, policy: OriginPolicy, *origins: str) -> None:
        for origin in origins:
            self.assertTrue(policy.allows(origin), f"{origin!r} refused")

    def assertRefuses(self, policy: OriginPolicy, *origins: str | None) -> None:
        for origin in origins:
            self.assertFalse(policy.allows(origin), f"{origin!r} admitted")


class UnrestrictedTests(OriginPolicyTestCase):
    def test_no_patterns_allow_anything(self) -> None:
        """Without --origin every Origin, and none at all, is allowed."""
        policy = OriginPolicy()
        self.assertAdmits(policy, "https://evil.com", "null", "")
        self.assertTrue(policy.allows(None))


class SubdomainWildcardTests(OriginPolicyTestCase):
    def setUp(self) -> None:
        self.policy = OriginPolicy(["https://*.example.com"])

    def test_subdomains(self) -> None:
        """The wildcard admits one or more labels of a subdomain."""
        self.assertAdmits(
            self.policy, "https://live.example.com", "https://a.b.example.com"
        )

    def test_escape_through_path_or_query(self) -> None:
        """The wildcard cannot cross into a path, query, userinfo or port."""
        self.assertRefuses(
            self.policy,
            "https://evil.com/?.example.com",
            "https://evil.com/.example.com",
            "https://evil.com#.example.com",
            "https://evil.com@x.example.com",
            "https://evil.com:443.example.com",
        )

    def test_suffix_attacks(self) -> None:
        """The pattern is anchored at the end: no trailing domain may follow."""
        self.assertRefuses(
            self.policy,
            "https://example.com.evil.net",
            "https://live.example.com.evil.net",
            "https://live.example.com:8443",
            "https://live.example.com/",
        )

    def test_label_boundary(self) -> None:
        """A name that merely ends in the domain's text is not a subdomain."""
        self.assertRefuses(self.policy, "https://evilexample.com")

    def test_scheme_is_part_of_the_match(self) -> None:
        """The pattern is anchored at the start: the scheme must match too."""
        self.assertRefuses(
            self.policy,
            "http://live.example.com",
            "xhttps://live.example.com",
            "wss://live.example.com",
        )

    def test_absent_origin(self) -> None:
        """A request without Origin is refused once the list is restricted."""
        self.assertRefuses(self.policy, None, "")

    def test_case_insensitive(self) -> None:
        """Scheme and host compare without regard to ASCII case."""
        self.assertAdmits(self.policy, "HTTPS://Live.Example.COM")
        upper = OriginPolicy(["HTTPS://*.EXAMPLE.COM"])
        self.assertAdmits(upper, "https://live.example.com")


class ExactPatternTests(OriginPolicyTestCase):
    def test_exact_match_only(self) -> None:
        """A pattern without ``*`` admits exactly that Origin."""
        policy = OriginPolicy(["https://example.com"])
        self.assertAdmits(policy, "https://example.com")
        self.assertRefuses(
            policy,
            "https://example.com:8443",
            "https://example.com.evil.net",
            "https://www.example.com",
            "https://example.co",
        )

    def test_dot_is_literal(self) -> None:
        """Regex metacharacters in a pattern match only themselves."""
        policy = OriginPolicy(["https://a.example.com"])
        self.assertRefuses(policy, "https://aXexample.com", "https://a-example.com")

    def test_several_patterns(self) -> None:
        """Any one of several patterns may admit an Origin."""
        policy = OriginPolicy(["https://example.com", "http://localhost:*"])
        self.assertAdmits(
            policy,
            "https://example.com",
            "http://localhost:8080",
            "http://localhost:3000",
        )
        self.assertRefuses(
            policy,
            "https://localhost:8080",
            "http://localhost:80@evil.com",
            "http://localhost:80/x",
        )

    def test_patterns_from_an_iterator(self) -> None:
        """Patterns handed in as a one-shot iterator all apply."""
        policy = OriginPolicy(iter(["https://a.com", "https://*.b.com"]))
        self.assertAdmits(policy, "https://a.com", "https://x.b.com")
        self.assertRefuses(policy, "https://c.com", "https://b.com.evil")


class LoneStarTests(OriginPolicyTestCase):
    def test_any_origin(self) -> None:
        """A lone ``*`` admits any Origin value, including ``null``."""
        policy = OriginPolicy(["*"])
        self.assertAdmits(
            policy,
            "https://evil.com",
            "null",
            "http://x.y:1/?q=#f",
            "chrome-extension://abc",
        )

    def test_still_requires_the_header(self) -> None:
        """A lone ``*`` still refuses a request that sent no Origin."""
        policy = OriginPolicy(["*"])
        self.assertRefuses(policy, None, "")


class UnicodeCaseTests(OriginPolicyTestCase):
    def test_no_unicode_case_folding(self) -> None:
        """Letters whose Unicode case folds to ASCII (Kelvin sign) never match."""
        policy = OriginPolicy(["https://kit.example.com", "https://*.example.org"])
        self.assertRefuses(
            policy,
            "https://\u212ait.example.com",
            "https://kit.example.com".replace("s", "\u017f"),
            "https://\u212a.example.org",
            "https://\u0130.example.org",
        )
        self.assertAdmits(policy, "https://KIT.example.com", "https://K.example.org")
