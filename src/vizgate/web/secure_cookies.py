"""Cookies set over https are marked ``Secure``, also behind a proxy that terminates TLS.

With ``--cert`` the gateway itself speaks https and Django marks its cookies ``Secure``
(``SESSION_COOKIE_SECURE``). Behind a reverse proxy that terminates TLS the gateway speaks
plain http to the proxy; the request still counts as secure when a trusted proxy says so
(uvicorn reads ``X-Forwarded-Proto`` from the addresses in ``FORWARDED_ALLOW_IPS``, 127.0.0.1 by
default). :class:`SecureCookiesMiddleware` marks every cookie of a response to such a request
``Secure``, so that a browser never sends the session cookie over plain http.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin

__all__ = ["SecureCookiesMiddleware"]


class SecureCookiesMiddleware(MiddlewareMixin):
    """Mark the cookies of responses to secure requests ``Secure``.

    A :class:`MiddlewareMixin` works in both of Django's modes, so the portal's async views
    stay on the server's event loop.
    """

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if request.is_secure():
            for cookie in response.cookies.values():
                cookie["secure"] = True
        return response
