"""The REST API: the seed's ``/v1`` endpoints (reserve, release, status, status_view, stop)."""

__all__: list[str] = []
