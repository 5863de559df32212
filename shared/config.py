"""One frozen, typed settings object built from the environment, once per instance.

Required values fail at start with a clear message; production refuses placeholder secrets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

PLACEHOLDERS = frozenset({"", "changeme", "change-me", "secret", "dev", "local", "placeholder"})


class ConfigError(RuntimeError):
    """The environment does not describe a runnable instance."""


@dataclass(frozen=True)
class Settings:
    environment: str  # "local", "test", "dev", "prod"
    project: str
    region: str
    service: str  # the function's name, used in logs and traces
    database_url: str | None  # local: a SQLAlchemy URL
    instance_connection_name: str | None  # production: Cloud SQL "project:region:instance"
    db_user: str | None
    db_name: str
    cursor_secret: str  # HMAC key for opaque pagination cursors
    jwt_issuer: str
    jwt_audience: str
    jwt_jwks_url: str | None
    jwt_public_key_pem: str | None
    genai_location: str
    genai_model: str
    genai_base_url: str | None  # local Vertex AI stand-in
    storage_base_url: str | None  # local fake-gcs-server
    log_level: str
    push_audience: str | None  # production: the URL Pub/Sub push tokens are minted for
    push_invoker_email: str | None
    oidc_issuer: str | None  # an external IdP (Clerk style) whose tokens are accepted too
    oidc_jwks_url: str | None
    oidc_audience: str | None  # checked when set; Clerk session tokens carry `azp` instead
    oidc_authorized_parties: tuple[str, ...]
    # Uploads: the bucket, how long signed URLs live, the per-user quota, and (local only) a
    # service-account key to sign URLs with; production signs through IAM signBlob instead.
    uploads_bucket: str = "uploads"
    upload_url_ttl_s: int = 900
    upload_quota_bytes: int = 200 * 1024 * 1024
    storage_signing_key: str | None = None

    @property
    def is_production(self) -> bool:
        return self.environment in {"dev", "prod", "production", "staging"}

    def require_cursor_secret(self) -> str:
        """The pagination key; functions that paginate call this at start to fail fast."""
        if not self.cursor_secret:
            raise ConfigError("CURSOR_SECRET is required by this function")
        return self.cursor_secret

    @property
    def has_database(self) -> bool:
        return bool(self.database_url or self.instance_connection_name)


def _require(env: dict[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"environment variable {name} is required but not set")
    return value


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"{name} must be a positive integer, not {raw!r}")
    return int(raw)


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build settings from `env` (default: the process environment); raises ConfigError."""
    env = dict(os.environ if env is None else env)
    environment = env.get("APP_ENV", "local").strip().lower()
    project = env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCP_PROJECT") or ""
    if not project:
        if environment in {"local", "test"}:
            project = "local-project"
        else:
            project = _require(env, "GOOGLE_CLOUD_PROJECT")
    settings = Settings(
        environment=environment,
        project=project,
        region=env.get("FUNCTION_REGION", "us-central1"),
        service=env.get("K_SERVICE") or env.get("FUNCTION_TARGET") or "local",
        database_url=env.get("DATABASE_URL") or None,
        instance_connection_name=env.get("INSTANCE_CONNECTION_NAME") or None,
        db_user=env.get("DB_IAM_USER") or None,
        db_name=env.get("DB_NAME", "app"),
        # Locally a fixed key; in production only functions that paginate get one (a secret).
        cursor_secret=env.get("CURSOR_SECRET") or (
            "" if environment not in {"local", "test"} else "local-cursor-secret"),
        jwt_issuer=env.get("JWT_ISSUER", "https://auth.local"),
        jwt_audience=env.get("JWT_AUDIENCE", "app"),
        jwt_jwks_url=env.get("JWT_JWKS_URL") or None,
        jwt_public_key_pem=env.get("JWT_PUBLIC_KEY_PEM") or None,
        genai_location=env.get("GENAI_LOCATION", "us-central1"),
        genai_model=env.get("GENAI_MODEL", "gemini-2.5-flash"),
        genai_base_url=env.get("GENAI_BASE_URL") or None,
        storage_base_url=env.get("STORAGE_EMULATOR_HOST") or None,
        log_level=env.get("LOG_LEVEL", "INFO").upper(),
        push_audience=env.get("PUSH_AUDIENCE") or None,
        push_invoker_email=env.get("PUSH_INVOKER_EMAIL") or None,
        oidc_issuer=env.get("OIDC_ISSUER") or None,
        oidc_jwks_url=env.get("OIDC_JWKS_URL") or None,
        oidc_audience=env.get("OIDC_AUDIENCE") or None,
        oidc_authorized_parties=tuple(
            p.strip() for p in env.get("OIDC_AUTHORIZED_PARTIES", "").split(",") if p.strip()),
        uploads_bucket=env.get("UPLOADS_BUCKET") or "uploads",
        upload_url_ttl_s=_int(env, "UPLOAD_URL_TTL_S", 900),
        upload_quota_bytes=_int(env, "UPLOAD_QUOTA_BYTES", 200 * 1024 * 1024),
        storage_signing_key=env.get("STORAGE_SIGNING_KEY") or None,
    )
    _check_production(settings)
    return settings


def _check_production(settings: Settings) -> None:
    if settings.oidc_issuer and not settings.oidc_jwks_url:
        raise ConfigError("OIDC_ISSUER needs OIDC_JWKS_URL")
    if not settings.is_production:
        return
    secret = settings.cursor_secret
    if secret and (secret.strip().lower() in PLACEHOLDERS or "local" in secret or len(secret) < 16):
        raise ConfigError("CURSOR_SECRET must be a real secret in production")
    if settings.database_url and not settings.instance_connection_name:
        # Production reaches Cloud SQL through the connector with IAM auth, never by URL.
        raise ConfigError("production uses INSTANCE_CONNECTION_NAME, not DATABASE_URL")
    if settings.genai_base_url or settings.storage_base_url:
        raise ConfigError("emulator endpoints must not be configured in production")
    if settings.storage_signing_key:
        # A key file is a long-lived secret; deployed functions sign through IAM signBlob.
        raise ConfigError("STORAGE_SIGNING_KEY is for the local cloud; production signs with IAM")


@cache
def get_settings() -> Settings:
    """The instance's settings, built once. Tests call `get_settings.cache_clear()`."""
    return load_settings()
