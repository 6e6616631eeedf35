"""The ``/v1`` URLs, as the seed's websocket server documents them."""

from __future__ import annotations

from django.urls import path

from vizgate.web.api import views

__all__ = ["app_name", "urlpatterns"]

app_name = "api"

urlpatterns = [
    # ``path``: a session type's name may hold any character, a slash included.
    path("reserve/<path:servicename>", views.reserve, name="reserve"),
    path("release/<str:token>", views.release, name="release"),
    path("status", views.status, name="status"),
    path("status_view", views.status_view, name="status_view"),
    path("stop", views.stop, name="stop"),
]
