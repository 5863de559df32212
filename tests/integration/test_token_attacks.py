"""RFC 8725 attack suite against a protected route (`PATCH /me`), plus tokens of an external
OIDC issuer (Clerk style). Every bad token is 401 with WWW-Authenticate and changes nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared import tokens as own_tokens
from tests.integration.identity_fixtures import Identity

ISSUER, AUDIENCE = "https://auth.test", "chat-rewards-apm"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def private_key(identity: Identity) -> Any:
    return serialization.load_pem_private_key(
        identity.signing_key["private_key_pem"].encode(), password=None)


def claims_for(account: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": account["user_id"], "roles": ["user"],
            "sid": account["session_id"], "jti": "j", "iat": now, "nbf": now, "exp": now + 600}
    return {k: v for k, v in (base | overrides).items() if v is not None}


def signed(identity: Identity, claims: dict[str, Any], kid: str = "it-1", key: Any = None
           ) -> str:
    return jwt.encode(claims, key or private_key(identity), algorithm="RS256",
                      headers={"kid": kid})


def alg_none(identity: Identity, account: dict[str, Any]) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "it-1"}).encode())
    return f"{header}.{b64(json.dumps(claims_for(account)).encode())}."


def hs256_with_public_key(identity: Identity, account: dict[str, Any]) -> str:
    public_pem = private_key(identity).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = (f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': 'it-1'}).encode())}"
                     f".{b64(json.dumps(claims_for(account)).encode())}")
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def tampered(identity: Identity, account: dict[str, Any]) -> str:
    header, _, signature = signed(identity, claims_for(account)).split(".")
    forged = b64(json.dumps(claims_for(account, roles=["admin"])).encode())
    return f"{header}.{forged}.{signature}"


def rogue_kid(identity: Identity, account: dict[str, Any]) -> str:
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return signed(identity, claims_for(account), kid="rogue", key=rogue)


def real_kid_other_key(identity: Identity, account: dict[str, Any]) -> str:
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return signed(identity, claims_for(account), kid="it-1", key=rogue)


ATTACKS: dict[str, Callable[[Identity, dict[str, Any]], str]] = {
    "alg_none": alg_none,
    "hs256_signed_with_rsa_public_key": hs256_with_public_key,
    "expired": lambda i, a: signed(i, claims_for(a, exp=int(time.time()) - 3600,
                                                 iat=int(time.time()) - 4000,
                                                 nbf=int(time.time()) - 4000)),
    "not_yet_valid": lambda i, a: signed(i, claims_for(a, nbf=int(time.time()) + 3600)),
    "wrong_issuer": lambda i, a: signed(i, claims_for(a, iss="https://evil.example")),
    "wrong_audience": lambda i, a: signed(i, claims_for(a, aud="another-api")),
    "unknown_kid": rogue_kid,
    "known_kid_wrong_key": real_kid_other_key,
    "tampered_payload": tampered,
    "missing_sub": lambda i, a: signed(i, claims_for(a, sub=None)),
    "missing_exp": lambda i, a: signed(i, claims_for(a, exp=None)),
    "session_of_someone_else": lambda i, a: signed(i, claims_for(
        a, sid="00000000-0000-0000-0000-000000000001")),
    "garbage": lambda i, a: "not-a-jwt",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_bad_tokens_are_refused_and_change_nothing(identity: Identity, attack: str) -> None:
    account = identity.signup()
    token = ATTACKS[attack](identity, account)
    resp = identity.users.patch("/me", headers={"Authorization": f"Bearer {token}"},
                                json={"display_name": "Pwned"})
    assert resp.status_code == 401, resp.json
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert resp.mimetype == "application/problem+json"
    assert identity.sql("SELECT display_name, roles FROM users WHERE id = :id",
                        id=account["user_id"]) == [("Ann", ["user"])]


def test_token_of_a_revoked_session_is_refused(identity: Identity) -> None:
    account = identity.signup()
    assert identity.auth.post("/logout", headers=identity.bearer(account)).status_code == 204
    resp = identity.users.patch("/me", headers=identity.bearer(account),
                                json={"display_name": "Pwned"})
    assert resp.status_code == 401 and "WWW-Authenticate" in resp.headers


def test_token_of_a_suspended_user_is_refused(identity: Identity) -> None:
    account = identity.signup()
    identity.sql("UPDATE users SET status = 'suspended' WHERE id = :id", id=account["user_id"])
    resp = identity.users.patch("/me", headers=identity.bearer(account),
                                json={"display_name": "Pwned"})
    assert resp.status_code == 401 and resp.json["code"] == "account_suspended"


def test_valid_token_without_the_role_is_403(identity: Identity) -> None:
    account = identity.signup()
    # Roles come from the account, not the token: a token claiming admin gains nothing.
    forged_roles = own_tokens.issue_access_token(account["user_id"], ["admin"],
                                                 account["session_id"])[0]
    resp = identity.users.get("/users", headers={"Authorization": f"Bearer {forged_roles}"})
    assert resp.status_code == 403 and "insufficient_scope" in resp.headers["WWW-Authenticate"]


def test_jwks_publishes_the_signing_key(identity: Identity) -> None:
    resp = identity.auth.get("/.well-known/jwks.json")
    assert resp.status_code == 200 and "max-age" in resp.headers["Cache-Control"]
    (key,) = resp.json["keys"]
    assert (key["kid"], key["kty"], key["alg"], key["use"]) == ("it-1", "RSA", "RS256", "sig")
    assert "d" not in key and "p" not in key  # never the private parts


class ExternalIdP:
    """A Clerk-like issuer: a JWKS served over HTTP on loopback, tokens with `azp`."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        body = json.dumps({"keys": [jwk | {"kid": "clerk-1", "alg": "RS256", "use": "sig"}]})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.jwks_url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.issuer = "https://clerk.example.dev"

    def token(self, sub: str, azp: str = "https://app.example.com", **extra: Any) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": sub, "azp": azp, "iat": now, "nbf": now,
                  "exp": now + 300, "sid": "sess_ext"} | extra
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "clerk-1"})


@pytest.fixture
def idp(identity: Identity, monkeypatch: pytest.MonkeyPatch) -> Iterator[ExternalIdP]:
    from shared import clients

    provider = ExternalIdP()
    monkeypatch.setenv("OIDC_ISSUER", provider.issuer)
    monkeypatch.setenv("OIDC_JWKS_URL", provider.jwks_url)
    monkeypatch.setenv("OIDC_AUTHORIZED_PARTIES", "https://app.example.com")
    clients.reset()
    yield provider
    provider.server.shutdown()


def test_external_idp_token_maps_to_a_local_user_created_once(identity: Identity,
                                                              idp: ExternalIdP) -> None:
    token = idp.token("user_2abc", name="Clerk User")
    first = identity.users.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert first.status_code == 200, first.json
    assert first.json["display_name"] == "Clerk User" and first.json["roles"] == ["user"]
    again = identity.users.get("/me", headers={"Authorization": f"Bearer {idp.token('user_2abc')}"})
    assert again.json["id"] == first.json["id"]
    assert identity.sql("SELECT count(*) FROM users WHERE external_subject = 'user_2abc'") == [
        (1,)]


def test_external_idp_token_for_another_party_is_refused(identity: Identity,
                                                         idp: ExternalIdP) -> None:
    token = idp.token("user_2abc", azp="https://evil.example.com")
    resp = identity.users.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401 and resp.json["code"] == "unauthorized_party"
    assert identity.sql("SELECT count(*) FROM users WHERE external_subject = 'user_2abc'") == [
        (0,)]
