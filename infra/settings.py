"""The stack's settings, from Pulumi config (`Pulumi.<stack>.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

APP = "chat-rewards-apm"


def secret_config_key(env_name: str) -> str:
    """Config key of a manifest secret: JWT_SIGNING_KEYS -> jwtSigningKeys."""
    first, *rest = env_name.lower().split("_")
    return first + "".join(part.capitalize() for part in rest)


def secret_id(env_name: str) -> str:
    """Secret Manager id of a manifest secret: JWT_SIGNING_KEYS -> jwt-signing-keys."""
    return env_name.lower().replace("_", "-")


@dataclass(frozen=True)
class StackSettings:
    project: str
    region: str
    environment: str
    firestore_location: str
    sql_tier: str
    sql_backup_retention_days: int
    sql_high_availability: bool
    telemetry_retention_days: int
    genai_model: str
    genai_location: str
    allowed_origins: tuple[str, ...]
    deletion_protection: bool

    @classmethod
    def load(cls) -> StackSettings:
        gcp = pulumi.Config("gcp")
        app = pulumi.Config()
        origins: Any = app.get_object("allowedOrigins") or []
        return cls(
            project=gcp.require("project"),
            region=app.get("region") or gcp.get("region") or "us-central1",
            environment=app.get("environment") or pulumi.get_stack(),
            firestore_location=app.get("firestoreLocation") or "nam5",
            sql_tier=app.get("sqlTier") or "db-custom-1-3840",
            sql_backup_retention_days=app.get_int("sqlBackupRetentionDays") or 7,
            sql_high_availability=app.get_bool("sqlHighAvailability") or False,
            telemetry_retention_days=app.get_int("telemetryRetentionDays") or 14,
            genai_model=app.get("genaiModel") or "gemini-2.5-flash",
            genai_location=app.get("genaiLocation") or "us-central1",
            allowed_origins=tuple(str(o) for o in origins),
            deletion_protection=app.get_bool("deletionProtection") is not False,
        )

    def self_ingest_token(self) -> pulumi.Output[str] | None:
        """The ingest token (`tt_...`, scope ingest) the product's own functions send their spans
        to span_ingest with; None when not configured (then they send none)."""
        return pulumi.Config().get_secret("telemetrySelfIngestToken")

    def secret(self, env_name: str) -> pulumi.Output[str]:
        """A manifest secret's value: required, and kept secret in state and previews."""
        return pulumi.Config().require_secret(secret_config_key(env_name))

    def function_url(self, name: str) -> str:
        """The deterministic URL of a gen2 function (also the push OIDC audience)."""
        return f"https://{self.region}-{self.project}.cloudfunctions.net/{deployed_name(name)}"


def deployed_name(name: str) -> str:
    """A manifest function's name on Google Cloud: gen2 functions are Cloud Run services,
    whose names allow no underscores."""
    return name.replace("_", "-")
