"""Settings shared by the producer and the workers."""

from config.settings import (
    ENV_PREFIX,
    TINY_MODEL,
    Settings,
    SettingsError,
    load_settings,
    to_environ,
)

__all__ = ["ENV_PREFIX", "TINY_MODEL", "Settings", "SettingsError", "load_settings", "to_environ"]
