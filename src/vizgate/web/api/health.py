"""``GET /healthz``: whether the gateway can serve sessions, for load balancers and monitors.

Open to everyone (a load balancer carries no token) and so it says nothing but the verdict:
200 ``{"status": "ok"}`` when the broker runs and the database answers, else 503 with a
``status`` and a ``reason`` an operator can act on. Never cached.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.csrf import csrf_exempt

from vizgate.web import runtime
from vizgate.web.portal.models import Session

__all__ = ["healthz"]

logger = logging.getLogger(__name__)


@csrf_exempt
async def healthz(request: HttpRequest) -> HttpResponse:
    """The gateway's health (see the module's documentation)."""
    response: HttpResponse
    if request.method not in ("GET", "HEAD"):
        response = HttpResponse("use GET\n", status=405, content_type="text/plain; charset=utf-8")
        response["Allow"] = "GET, HEAD"
    else:
        problem = await _problem()
        if problem is None:
            response = JsonResponse({"status": "ok"})
        else:
            response = JsonResponse({"status": "unavailable", "reason": problem}, status=503)
    add_never_cache_headers(response)
    return response


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
