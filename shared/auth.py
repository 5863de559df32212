"""Who the caller is: JWT verification (RFC 8725) and the account behind the token.

Tokens are verified with an explicit algorithm allow-list, required issuer, audience (own
tokens), expiry, not-before and issued-at, and a small leeway for clock skew. Own tokens are
RS256 from the `auth` function (keys by `kid` from its JWKS); tokens of an external OIDC issuer
(Clerk style: JWKS URL, issuer, authorized parties in `azp`) are accepted too and map to a local
user created on first sight.

Every authenticated request then reads the account in one query: a revoked or expired session,
or a suspended or deleted user, is refused at once (not when the token expires), and roles come
from the database, so a role change applies to the next request.
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
USABLE_STATUSES = ("active", "inactive")  # inactive users may still read their data


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[str]
    session_id: str | None = None
    token_id: str | None = None
    status: str = "active"
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def has_role(self, role: str) -> bool:
        return role in self.roles or "admin" in self.roles


KeyResolver = Callable[[str], Any]  # token -> verification key


def _bad_token(detail: str, code: str = "invalid_token") -> errors.Unauthorized:
    return errors.Unauthorized(detail, code=code)


def verify_token(
    token: str,
    key_for: KeyResolver,
    *,
    issuer: str,
    audience: str | Iterable[str] | None,
    algorithms: Iterable[str] = ALLOWED_ALGORITHMS,
    leeway_s: int = LEEWAY_S,
) -> Principal:
    """Verify `token` and return its claims as a principal; raises Unauthorized with a stable
    code. `audience=None` skips the audience check (external IdPs that use `azp` instead)."""
    import jwt

    algorithms = [a for a in algorithms if a in ALLOWED_ALGORITHMS]
    required = ["exp", "iat", "iss", "sub"] + (["aud"] if audience is not None else [])
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") not in algorithms:
            raise _bad_token("token algorithm is not allowed")
        claims = jwt.decode(
            token,
            key=key_for(token),
            algorithms=algorithms,
            audience=audience if isinstance(audience, str | None) else list(audience),
            issuer=issuer,
            leeway=leeway_s,
            options={"require": required, "verify_aud": audience is not None},
        )
    except jwt.ExpiredSignatureError:
        raise _bad_token("token has expired", "token_expired") from None
    except jwt.ImmatureSignatureError:
        raise _bad_token("token is not valid yet", "token_not_yet_valid") from None
    except (jwt.PyJWTError, ValueError, KeyError, TypeError):
        raise _bad_token("token is invalid") from None
    roles = claims.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise _bad_token("token roles are malformed")
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise _bad_token("token subject is malformed")
    return Principal(
        subject=claims["sub"],
        roles=frozenset(r for r in roles if r in ROLES),
        session_id=claims.get("sid") if isinstance(claims.get("sid"), str) else None,
        token_id=claims.get("jti") if isinstance(claims.get("jti"), str) else None,
        claims=claims,
    )


def jwks_resolver(url: str) -> KeyResolver:
    """Keys from a JWKS document, cached and refreshed on an unknown `kid` (key rotation)."""
    import jwt

    client = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)

    def key_for(token: str) -> Any:
        try:
            return client.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError:
            raise errors.ServiceUnavailable("token keys are unreachable", code="jwks_unavailable"
                                            ) from None
        except jwt.PyJWKClientError:
            raise _bad_token("token signing key is unknown") from None

    return key_for


def local_keys_resolver() -> KeyResolver:
    """The auth function verifies its own tokens with the public halves of its signing keys."""
    import jwt

    from shared import tokens

    keys = {k.kid: k.private_key.public_key() for k in tokens.signing_keys()}

    def key_for(token: str) -> Any:
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in keys:
            raise _bad_token("token signing key is unknown")
        return keys[kid]

    return key_for


def pem_resolver(pem: str) -> KeyResolver:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem.encode())
    return lambda _token: key


@cache
def own_resolver() -> KeyResolver:
    import os

    settings = get_settings()
    if os.environ.get("JWT_SIGNING_KEYS"):
        return local_keys_resolver()
    if settings.jwt_jwks_url:
        return jwks_resolver(settings.jwt_jwks_url)
    if settings.jwt_public_key_pem:
        return pem_resolver(settings.jwt_public_key_pem)
    raise errors.ServiceUnavailable("token verification is not configured",
                                    code="auth_unconfigured")


@cache
def external_resolver() -> KeyResolver:
    return jwks_resolver(str(get_settings().oidc_jwks_url))


def bearer_token(request: flask.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthorized("send a bearer token", code="missing_token",
                                  headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def _unverified_issuer(token: str) -> str | None:
    import jwt

    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        raise _bad_token("token is malformed") from None
    return issuer if isinstance(issuer, str) else None


# Tokens this instance verified, kept until they expire or for VERIFIED_TTL_S at most: a chat
# client sends the same token with every turn, and verifying it (three parses and an RSA check)
# cost ~0.15 ms a request, ~0.4 ms after an idle pause. The key is the whole token string, so a
# token that differs by one byte is verified afresh. Revocation does not depend on this: the
# session and the account are checked in the database on every request (`authenticate`).
# The TTL bounds how long a token signed by a key just removed from rotation is still taken.
VERIFIED_TTL_S = 60.0
VERIFIED_MAX = 4096
_verified: dict[str, tuple[float, Principal, bool]] = {}


def verify_request_token(token: str) -> tuple[Principal, bool]:
    """Verify a bearer token of ours or of the external IdP; returns (claims, is_external)."""
    import time

    now = time.time()
    known = _verified.get(token)
    if known is not None and now < known[0]:
        return known[1], known[2]
    principal, external = _verify_request_token(token)
    expires = principal.claims.get("exp")
    if isinstance(expires, int | float):
        if len(_verified) >= VERIFIED_MAX:
            _verified.clear()  # bounded; the next requests verify again
        _verified[token] = (min(float(expires), now + VERIFIED_TTL_S), principal, external)
    return principal, external


def _verify_request_token(token: str) -> tuple[Principal, bool]:
    settings = get_settings()
    issuer = _unverified_issuer(token)
    if issuer == settings.jwt_issuer:
        principal = verify_token(token, own_resolver(), issuer=settings.jwt_issuer,
                                 audience=settings.jwt_audience, algorithms=("RS256",))
        if principal.session_id is None:
            raise _bad_token("token has no session")
        return principal, False
    if settings.oidc_issuer and issuer == settings.oidc_issuer:
        principal = verify_token(token, external_resolver(), issuer=settings.oidc_issuer,
                                 audience=settings.oidc_audience)
        azp = principal.claims.get("azp")
        if settings.oidc_authorized_parties and azp not in settings.oidc_authorized_parties:
            raise _bad_token("token was issued to another party", "unauthorized_party")
        return principal, True
    raise _bad_token("token issuer is not trusted")


def authenticate(request: flask.Request) -> Principal:
    """The router's authenticator: a verified token backed by a live session and account."""
    from shared import accounts, db

    principal, external = verify_request_token(bearer_token(request))
    # Autocommit: a lookup (or an idempotent insert and a lookup) needs no BEGIN/COMMIT.
    with db.autocommit_engine().connect() as conn:
        if external:
            return accounts.external_principal(conn, get_settings().oidc_issuer or "", principal)
        return accounts.session_principal(conn, principal)


def parse_uuid(value: str, what: str = "id") -> str:
    """A path id as a canonical UUID; anything else names nothing, so it is 404 (before SQL)."""
    from shared.validation import canonical_uuid

    canonical = canonical_uuid(value)
    if canonical is None:
        raise errors.NotFound(f"no such {what}")
    return canonical
