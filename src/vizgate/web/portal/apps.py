"""The portal's Django app configuration."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["PortalConfig"]


class PortalConfig(AppConfig):
    """The portal app."""

    name = "vizgate.web.portal"
    label = "portal"
    verbose_name = "vizgate portal"
    default_auto_field = "django.db.models.BigAutoField"
