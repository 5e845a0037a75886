"""Settings shared by the producer and the workers."""

from config.settings import (
    ENV_PREFIX,
    FIELD_SEPARATOR,
    LORA_SEPARATOR,
    TINY_EDITORS,
    TINY_MODEL,
    Settings,
    SettingsError,
    ignored_variables,
    load_settings,
    parse_lora,
    to_environ,
    validate_settings,
)

__all__ = ["ENV_PREFIX", "FIELD_SEPARATOR", "LORA_SEPARATOR", "TINY_EDITORS", "TINY_MODEL", "Settings", "SettingsError",
           "ignored_variables", "load_settings", "parse_lora", "to_environ",
           "validate_settings"]
