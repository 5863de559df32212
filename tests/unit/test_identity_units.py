"""Password policy and hashing parameters, signing keys and JWKS rotation."""

from __future__ import annotations

import json

import jwt
import pytest

from shared import errors, passwords, tokens
from shared.auth import verify_token
from shared.config import ConfigError


@pytest.mark.parametrize(("password", "email", "name"), [
    ("short", "", ""),
    ("x" * 129, "", ""),
    ("password123", "", ""),
    ("ababababababab", "", ""),
    ("minsu.kim-rocks-2026", "minsu.kim@example.com", ""),
    ("Mina the Barista", "", "mina the barista"),
])
def test_policy_refuses_weak_passwords(password: str, email: str, name: str) -> None:
    with pytest.raises(errors.ValidationFailed) as caught:
        passwords.check_policy(password, email, name)
    assert caught.value.code == "weak_password"


def test_policy_accepts_a_passphrase() -> None:
    passwords.check_policy("correct horse battery staple", "ann@example.com", "Ann")


def test_hash_uses_owasp_argon2id_parameters() -> None:
    stored = passwords.hash_password("correct horse battery staple")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify_password(stored, "correct horse battery staple")
    assert not passwords.verify_password(stored, "wrong horse battery staple")
    assert not passwords.verify_password("not-a-hash", "anything")
    assert not passwords.needs_rehash(stored)


def test_keys_rotate_without_dropping_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import clients

    old, new = tokens.generate_signing_key("old"), tokens.generate_signing_key("new")
    monkeypatch.setenv("JWT_SIGNING_KEYS", json.dumps([old]))
    clients.reset()
    before, _ = tokens.issue_access_token("u1", ["user"], "s1")
    monkeypatch.setenv("JWT_SIGNING_KEYS", json.dumps([new, old]))  # rotation: new first
    clients.reset()
    after, _ = tokens.issue_access_token("u1", ["user"], "s1")
    assert jwt.get_unverified_header(after)["kid"] == "new"
    published = {k["kid"]: k for k in tokens.jwks()["keys"]}
    assert set(published) == {"new", "old"}
    for token in (before, after):
        kid = jwt.get_unverified_header(token)["kid"]
        key = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(published[kid]))
        principal = verify_token(token, lambda _t, key=key: key, issuer="https://auth.local",
                                 audience="app")
        assert principal.subject == "u1" and principal.session_id == "s1"
    clients.reset()


@pytest.mark.parametrize("raw", ["null", "[]", "not json", '[{"kid": "a"}]',
                                 '[{"kid": "a", "private_key_pem": "nope"}]'])
def test_malformed_signing_keys_fail_fast(raw: str) -> None:
    with pytest.raises(ConfigError):
        tokens.parse_signing_keys(raw)


def test_duplicate_kids_are_refused() -> None:
    key = tokens.generate_signing_key("same")
    with pytest.raises(ConfigError, match="duplicate"):
        tokens.parse_signing_keys(json.dumps([key, key]))


def test_access_token_claims() -> None:
    import os

    os.environ["JWT_SIGNING_KEYS"] = json.dumps([tokens.generate_signing_key("k")])
    try:
        from shared import clients

        clients.reset()
        token, ttl = tokens.issue_access_token("u1", ["user", "admin"], "s1")
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
        assert header["alg"] == "RS256" and header["kid"] == "k" and ttl == 900
        assert set(claims) == {"iss", "aud", "sub", "roles", "sid", "jti", "iat", "nbf", "exp"}
        assert claims["exp"] - claims["iat"] == 900
    finally:
        del os.environ["JWT_SIGNING_KEYS"]
        clients.reset()
