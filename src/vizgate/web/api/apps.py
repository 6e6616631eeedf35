"""The API's Django app configuration."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["ApiConfig"]


class ApiConfig(AppConfig):
    """The REST API app."""

    name = "vizgate.web.api"
    label = "api"
    verbose_name = "vizgate API"
