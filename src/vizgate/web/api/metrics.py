"""``GET /metrics``: the gateway's metrics for Prometheus (see :mod:`vizgate.metrics`).

Guarded like ``/v1``: with a security token configured, a scrape must carry it, best as
``Authorization: Bearer TOKEN`` (Prometheus' ``authorization`` setting); without one the
metrics are as open as ``/v1/status``.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from vizgate.lifecycle import LIVE_STATES, State
from vizgate.metrics import CONTENT_TYPE, exposition
from vizgate.web import runtime
from vizgate.web.api.views import authorized, read_only_endpoint

__all__ = ["metrics"]

# Every live state, in the lifecycle's order, so that each type reports each state.
_STATES = [state.value for state in State if state in LIVE_STATES]


@read_only_endpoint
async def metrics(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus' text exposition format."""
    if not authorized(request):
        response = HttpResponse(
            "this server requires its security token: Authorization: Bearer TOKEN\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="vizgate"'
        return response
    try:
        broker = runtime.get_broker()
    except runtime.BrokerUnavailable as exc:
        return HttpResponse(f"{exc}\n", status=503, content_type="text/plain; charset=utf-8")
    text = exposition(
        broker.services(),
        broker.sessions(),
        broker.tally,
        states=_STATES,
        paused=broker.paused() is not None,
        nodes=broker.nodes(),
        store_waiting=broker.store.waiting() if broker.store is not None else 0,
        store_activity=broker.store.activity() if broker.store is not None else None,
    )
    return HttpResponse(text, content_type=CONTENT_TYPE)
