"""JWT verification follows RFC 8725: allow-listed algorithms, issuer, audience, expiry."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from shared import errors
from shared.auth import verify_token

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ISS, AUD = "https://auth.local", "app"


def token(key=KEY, algorithm: str = "RS256", **overrides) -> str:
    now = int(time.time())
    claims = {"sub": "u1", "roles": ["user", "bogus"], "iss": ISS, "aud": AUD, "iat": now,
              "exp": now + 900, "sid": "s1", "jti": "j1"} | overrides
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key,
                      algorithm=algorithm)


def verify(tok: str, key=KEY):
    return verify_token(tok, lambda _t: key.public_key(), issuer=ISS, audience=AUD)


def test_valid_token_gives_principal_with_known_roles_only() -> None:
    principal = verify(token())
    assert principal.subject == "u1" and principal.roles == {"user"}
    assert principal.session_id == "s1" and principal.token_id == "j1"


def test_leeway_accepts_small_clock_skew() -> None:
    assert verify(token(exp=int(time.time()) - 5)).subject == "u1"


@pytest.mark.parametrize(
    ("tok", "code"),
    [
        (lambda: token(exp=int(time.time()) - 120), "token_expired"),
        (lambda: token(iss="https://evil"), "invalid_token"),
        (lambda: token(aud="other"), "invalid_token"),
        (lambda: token(key=OTHER), "invalid_token"),
        (lambda: token(exp=None), "invalid_token"),
        (lambda: token(roles="admin"), "invalid_token"),
        (lambda: "not.a.jwt", "invalid_token"),
        (lambda: jwt.encode({"sub": "u1", "iss": ISS, "aud": AUD, "iat": 1, "exp": 2**33},
                            "shared-secret-that-is-long-enough-32b", algorithm="HS256"),
         "invalid_token"),
    ],
)
def test_bad_tokens_are_rejected(tok, code: str) -> None:
    with pytest.raises(errors.Unauthorized) as caught:
        verify(tok())
    assert caught.value.code == code


def test_alg_none_is_rejected() -> None:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}." \
               f"{b64({'sub': 'u1', 'iss': ISS, 'aud': AUD, 'iat': now, 'exp': now + 60})}."
    with pytest.raises(errors.Unauthorized):
        verify(unsigned)


def test_verified_tokens_are_remembered_until_they_expire(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A client's repeated token is verified once; an altered one, or one past its expiry (or
    the TTL), is verified again. The session is still checked per request elsewhere."""
    from shared import auth
    from shared.auth import Principal

    calls: list[str] = []
    now = time.time()

    def verified(token: str) -> tuple[Principal, bool]:
        calls.append(token)
        exp = now + (5 if token == "short" else 3600)
        return Principal(subject="u", roles=frozenset(), session_id="s", token_id=None,
                         claims={"exp": exp}), False

    monkeypatch.setattr(auth, "_verified", {})
    monkeypatch.setattr(auth, "_verify_request_token", verified)
    clock = {"t": now}
    monkeypatch.setattr(time, "time", lambda: clock["t"])
    assert auth.verify_request_token("a")[0].subject == "u"
    auth.verify_request_token("a")
    auth.verify_request_token("a.")  # another string: verified afresh
    auth.verify_request_token("short")
    assert calls == ["a", "a.", "short"]
    clock["t"] = now + 10  # past "short"'s expiry, within the TTL of "a"
    auth.verify_request_token("a")
    auth.verify_request_token("short")
    assert calls == ["a", "a.", "short", "short"]
    clock["t"] = now + auth.VERIFIED_TTL_S + 1  # past the TTL
    auth.verify_request_token("a")
    assert calls[-1] == "a"
