"""The URLs of the gateway: the portal at ``/``, the seed's REST API at ``/v1/``, the metrics
for Prometheus at ``/metrics``, the health check at ``/healthz``, the admin, and the static
files (served by the gateway itself)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from vizgate.web.api.health import healthz
from vizgate.web.api.metrics import metrics
from vizgate.web.portal import assets

__all__ = ["handler500", "urlpatterns"]

# A 503 that says so while the database is away; Django's own 500 page otherwise.
handler500 = "vizgate.web.database_outage.server_error"

urlpatterns = [
    path("", include("vizgate.web.portal.urls")),
    path("v1/", include("vizgate.web.api.urls")),
    path("metrics", metrics, name="metrics"),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("static/<path:path>", assets.serve, name="static"),
]
