"""JWT verification and role checks (RFC 8725): an explicit algorithm allow-list, required
issuer, audience, expiry and issued-at, and a small leeway for clock skew.

Keys come from a JWKS URL (own `auth` function or an external IdP, cached by PyJWKClient) or a
PEM public key. PyJWT is imported on first verification, not at function import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import flask

from shared import errors
from shared.config import get_settings

ALLOWED_ALGORITHMS = ("RS256", "ES256")  # never "none", never HS* with a public key
LEEWAY_S = 30
ROLES = ("user", "operator", "auditor", "admin")


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[str]
    session_id: str | None = None
    token_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def has_role(self, role: str) -> bool:
        return role in self.roles or "admin" in self.roles


KeyResolver = Callable[[str], Any]  # token -> verification key


def verify_token(
    token: str,
    key_for: KeyResolver,
    *,
    issuer: str,
    audience: str | Iterable[str],
    algorithms: Iterable[str] = ALLOWED_ALGORITHMS,
    leeway_s: int = LEEWAY_S,
) -> Principal:
    """Verify `token` and return its principal; raises Unauthorized with a stable code."""
    import jwt

    algorithms = [a for a in algorithms if a in ALLOWED_ALGORITHMS]
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") not in algorithms:
            raise _bad_token("token algorithm is not allowed")
        claims = jwt.decode(
            token,
            key=key_for(token),
            algorithms=algorithms,
            audience=list(audience) if not isinstance(audience, str) else audience,
            issuer=issuer,
            leeway=leeway_s,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise errors.Unauthorized("token has expired", code="token_expired") from None
    except (jwt.PyJWTError, ValueError, KeyError):
        raise errors.Unauthorized("token is invalid", code="invalid_token") from None
    roles = claims.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise errors.Unauthorized("token roles are malformed", code="invalid_token")
    return Principal(
        subject=str(claims["sub"]),
        roles=frozenset(r for r in roles if r in ROLES),
        session_id=claims.get("sid"),
        token_id=claims.get("jti"),
        claims=claims,
    )


def _bad_token(detail: str) -> errors.Unauthorized:
    return errors.Unauthorized(detail, code="invalid_token")


def jwks_resolver(url: str) -> KeyResolver:
    """Keys from a JWKS document, cached and refreshed on unknown `kid` (key rotation)."""
    import jwt

    client = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)

    def key_for(token: str) -> Any:
        try:
            return client.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientError:
            raise errors.Unauthorized("token signing key is unknown", code="invalid_token"
                                      ) from None

    return key_for


def pem_resolver(pem: str) -> KeyResolver:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem.encode())
    return lambda _token: key


@cache
def _configured_resolver() -> KeyResolver:
    settings = get_settings()
    if settings.jwt_jwks_url:
        return jwks_resolver(settings.jwt_jwks_url)
    if settings.jwt_public_key_pem:
        return pem_resolver(settings.jwt_public_key_pem)
    raise errors.ServiceUnavailable("token verification is not configured",
                                    code="auth_unconfigured")


def bearer_token(request: flask.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthorized("send a bearer token", code="missing_token")
    return token.strip()


def authenticate(request: flask.Request) -> Principal:
    """The router's authenticator: verify the request's bearer token against the configured keys."""
    settings = get_settings()
    return verify_token(
        bearer_token(request), _configured_resolver(),
        issuer=settings.jwt_issuer, audience=settings.jwt_audience,
    )
