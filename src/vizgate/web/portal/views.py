"""The portal's views."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

__all__ = ["home"]


async def home(request: HttpRequest) -> HttpResponse:
    """The front page: what this server is and where its status is."""
    return render(request, "portal/home.html")
