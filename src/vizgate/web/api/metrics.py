"""``GET /metrics``: the gateway's metrics for Prometheus (see :mod:`vizgate.metrics`).

Guarded like ``/v1``: with a security token configured, a scrape must carry it, best as
``Authorization: Bearer TOKEN`` (Prometheus' ``authorization`` setting); without one the
metrics are as open as ``/v1/status``.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.csrf import csrf_exempt

from vizgate.lifecycle import LIVE_STATES, State
from vizgate.metrics import CONTENT_TYPE, exposition
from vizgate.web import runtime
from vizgate.web.api.views import authorized

__all__ = ["metrics"]

# Every live state, in the lifecycle's order, so that each type reports each state.
_STATES = [state.value for state in State if state in LIVE_STATES]


@csrf_exempt
async def metrics(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus' text exposition format."""
    response: HttpResponse
    if request.method not in ("GET", "HEAD"):
        response = HttpResponse("use GET\n", status=405, content_type="text/plain; charset=utf-8")
        response["Allow"] = "GET, HEAD"
    elif not authorized(request):
        response = HttpResponse(
            "this server requires its security token: Authorization: Bearer TOKEN\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="vizgate"'
    else:
        try:
            broker = runtime.get_broker()
        except runtime.BrokerUnavailable as exc:
            response = HttpResponse(
                f"{exc}\n", status=503, content_type="text/plain; charset=utf-8"
            )
        else:
            text = exposition(broker.services(), broker.sessions(), broker.tally, states=_STATES)
            response = HttpResponse(text, content_type=CONTENT_TYPE)
    add_never_cache_headers(response)
    return response
