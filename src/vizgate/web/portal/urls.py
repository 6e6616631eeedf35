"""The portal's URLs."""

from __future__ import annotations

from django.urls import path

from vizgate.web.portal import views

__all__ = ["app_name", "urlpatterns"]

app_name = "portal"

urlpatterns = [
    path("", views.home, name="home"),
]
