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
