"""``GET /healthz``: whether the gateway can serve sessions, for load balancers and monitors.

Open to everyone (a load balancer carries no token) and so it says nothing but the verdict:
200 ``{"status": "ok"}`` when the broker runs and the database answers, else 503 with a
``status`` and a ``reason`` an operator can act on. Never cached.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse

from vizgate.web import runtime
from vizgate.web.api.views import read_only_endpoint
from vizgate.web.portal.models import Session

__all__ = ["healthz"]

logger = logging.getLogger(__name__)


@read_only_endpoint
async def healthz(request: HttpRequest) -> HttpResponse:
    """The gateway's health (see the module's documentation)."""
    problem = await _problem()
    if problem is None:
        return JsonResponse({"status": "ok"})
    return JsonResponse({"status": "unavailable", "reason": problem}, status=503)


async def _problem() -> str | None:
    try:
        runtime.get_broker()
    except runtime.BrokerUnavailable as exc:
        return str(exc)
    try:
        await Session.objects.filter(state="reserved").aexists()
    except DatabaseError as exc:
        logger.warning("health check: the database does not answer: %s", exc)
        return "the database does not answer"
    return None
