"""Per-instance start-up shared by every function: settings (fail fast) and JSON logging.

Cheap by design: no network and no heavy imports, so it can run at module import.
"""

from __future__ import annotations

from shared.config import Settings, get_settings
from shared.logs import setup_logging


def init() -> Settings:
    settings = get_settings()
    setup_logging(settings.project, settings.log_level)
    return settings
