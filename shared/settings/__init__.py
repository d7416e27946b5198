"""Typed settings, one class per service (see README, "Configuration")."""

from shared.settings.base import BaseServiceSettings
from shared.settings.loader import SettingsError, load_settings

__all__ = ["BaseServiceSettings", "SettingsError", "load_settings"]
