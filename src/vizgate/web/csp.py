"""The Content-Security-Policy of every page the gateway serves.

The gateway's pages load scripts, styles and images from the gateway only and open WebSockets
to it only (in CSP Level 3, ``'self'`` also matches ``ws:`` and ``wss:`` of the page's host); no
page may frame them. :class:`ContentSecurityPolicyMiddleware` gives this policy to every
response that has none of its own: the login page, Django's admin (whose templates have no
inline script or style), error pages.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin

__all__ = ["CONTENT_SECURITY_POLICY", "ContentSecurityPolicyMiddleware"]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """Set :data:`CONTENT_SECURITY_POLICY` on responses that carry no policy of their own.

    A :class:`MiddlewareMixin` works in both of Django's modes, so the portal's async views
    stay on the server's event loop.
    """

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response
