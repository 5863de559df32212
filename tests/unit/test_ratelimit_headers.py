"""Rate-limit pieces that need no database: response fields, caller keys, configuration."""

from __future__ import annotations

import pytest

from shared.ratelimit import Decision, Limit, caller_key, client_ip, headers, limit_from_env

AUTH = Limit("auth", 10, 20)


def test_allowed_response_carries_policy_and_service_limit() -> None:
    decision = Decision(allowed=True, limit=AUTH, remaining=7, retry_after_s=0, reset_s=2)
    assert headers(decision) == {
        "RateLimit-Policy": '"auth";q=20;w=2',
        "RateLimit": '"auth";r=7;t=2',
    }


def test_denied_response_adds_retry_after_and_never_points_before_the_window() -> None:
    slow = Limit("chat", 0.2, 3)
    decision = Decision(allowed=False, limit=slow, remaining=0, retry_after_s=5, reset_s=15)
    assert headers(decision) == {
        "RateLimit-Policy": '"chat";q=3;w=15',
        # t is the Retry-After on a denial: draft section 6 wants Retry-After >= the window.
        "RateLimit": '"chat";r=0;t=5',
        "Retry-After": "5",
    }


@pytest.mark.parametrize(("rate", "burst", "window"), [(10, 20, 2), (3, 20, 7), (0.5, 1, 2),
                                                       (100, 1, 1)])
def test_policy_window_is_the_whole_refill_rounded_up(rate: float, burst: int, window: int
                                                      ) -> None:
    decision = Decision(allowed=True, limit=Limit("x", rate, burst), remaining=0, retry_after_s=0,
                        reset_s=0)
    assert headers(decision)["RateLimit-Policy"] == f'"x";q={burst};w={window}'


@pytest.mark.parametrize(("name", "rate", "burst"), [
    ("", 1, 1), ('quo"te', 1, 1), ("a:b", 1, 1), ("x", 0, 1), ("x", -1, 1),
    ("x", float("nan"), 1), ("x", float("inf"), 1), ("x", 1, 0),
])
def test_limit_rejects_what_cannot_be_a_bucket(name: str, rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        Limit(name, rate, burst)


def test_authenticated_callers_are_keyed_by_subject() -> None:
    assert caller_key("u-123", "203.0.113.7", "10.0.0.1") == "user:u-123"


def test_the_last_forwarded_entry_wins_so_spoofed_entries_are_ignored() -> None:
    # The client sent "6.6.6.6, 7.7.7.7"; Google's front end appended the address it saw.
    assert caller_key(None, "6.6.6.6, 7.7.7.7, 203.0.113.7", "169.254.1.1") == "ip:203.0.113.7"
    assert caller_key(None, "1.1.1.1,203.0.113.7", None) == "ip:203.0.113.7"
    assert caller_key(None, " 203.0.113.7 ", None) == "ip:203.0.113.7"


@pytest.mark.parametrize("forwarded", [None, "", "203.0.113.7, not-an-ip", "203.0.113.7,",
                                       "203.0.113.7:443", "unknown"])
def test_an_unusable_last_entry_falls_back_to_the_peer(forwarded: str | None) -> None:
    assert caller_key(None, forwarded, "198.51.100.2") == "ip:198.51.100.2"


def test_nothing_usable_shares_one_bucket_instead_of_escaping() -> None:
    assert caller_key(None, "garbage", "also garbage") == "ip:unknown"
    assert caller_key(None, None, None) == "ip:unknown"
    assert caller_key("", None, None) == "ip:unknown"


def test_ipv6_callers_are_keyed_by_their_64() -> None:
    one = caller_key(None, "2001:db8:1:2:aaaa::1", None)
    same_host_rotating = caller_key(None, "2001:db8:1:2:ffff:eeee:dddd:cccc", None)
    neighbour = caller_key(None, "2001:db8:1:3::1", None)
    assert one == same_host_rotating == "ip:2001:db8:1:2::/64"
    assert neighbour == "ip:2001:db8:1:3::/64"
    assert caller_key(None, None, "fe80::1%eth0") == "ip:fe80::/64"


def test_ipv4_mapped_ipv6_is_the_ipv4_caller() -> None:
    assert caller_key(None, "::ffff:203.0.113.7", None) == "ip:203.0.113.7"


def test_client_ip_is_the_full_address_for_logs_and_sessions() -> None:
    # The /64 is only how buckets are keyed; a session records the address itself.
    assert client_ip("6.6.6.6, 2001:db8:1:2:aaaa::1", None) == "2001:db8:1:2:aaaa::1"
    assert client_ip("garbage", "fe80::1%eth0") == "fe80::1"
    assert client_ip("::ffff:203.0.113.7", None) == "203.0.113.7"
    assert client_ip(None, None) is None


def test_limit_from_env_reads_the_three_variables() -> None:
    env = {"RATE_LIMIT_CLASS": "auth", "RATE_LIMIT_RATE": "10", "RATE_LIMIT_BURST": "20"}
    assert limit_from_env(env) == AUTH
    assert limit_from_env(env | {"RATE_LIMIT_RATE": "0.25"}) == Limit("auth", 0.25, 20)


@pytest.mark.parametrize("env", [{}, {"RATE_LIMIT_CLASS": ""}, {"RATE_LIMIT_RATE": "10"}])
def test_limit_from_env_without_a_class_means_no_limit(env: dict[str, str]) -> None:
    assert limit_from_env(env) is None


@pytest.mark.parametrize(("rate", "burst", "message"), [
    ("fast", "20", "RATE_LIMIT_RATE must be a number"),
    ("", "20", "RATE_LIMIT_RATE must be a number"),
    ("10", "2.5", "RATE_LIMIT_BURST must be an integer"),
    ("10", "lots", "RATE_LIMIT_BURST must be an integer"),
    ("0", "20", "rate must be > 0"),
    ("nan", "20", "rate must be > 0"),
    ("10", "0", "burst must be >= 1"),
    (None, "20", "needs RATE_LIMIT_RATE and RATE_LIMIT_BURST"),
    ("10", None, "needs RATE_LIMIT_RATE and RATE_LIMIT_BURST"),
])
def test_limit_from_env_rejects_bad_numbers_clearly(rate: str | None, burst: str | None,
                                                    message: str) -> None:
    env = {"RATE_LIMIT_CLASS": "auth"}
    if rate is not None:
        env["RATE_LIMIT_RATE"] = rate
    if burst is not None:
        env["RATE_LIMIT_BURST"] = burst
    with pytest.raises(ValueError, match=message):
        limit_from_env(env)
