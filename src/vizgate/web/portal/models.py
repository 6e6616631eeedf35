"""What the gateway keeps in its database: every session, and the audit trail of each.

A session row is written by the broker through :class:`vizgate.web.portal.store.DjangoSessionStore`
whenever its state changes; a restarted gateway adopts the rows that had not ended. The token is
never stored, only its SHA-256. The database itself forbids two live sessions on the same
instance of a session type.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

__all__ = ["Session", "SessionEvent", "ShareLink"]

STATE_CHOICES = [
    ("reserved", "reserved"),
    ("starting", "starting"),
    ("waiting_ready", "waiting for the VNC server"),
    ("running", "running"),
    ("cancelling", "cancelling"),
    ("stopping", "stopping"),
    ("ended", "ended"),
]


class Session(models.Model):
    """One session, from its reservation to its end."""

    id = models.CharField(primary_key=True, max_length=16, editable=False)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    service = models.CharField("session type", max_length=200)
    index = models.PositiveIntegerField("instance index")
    user = models.CharField(max_length=150, blank=True)
    bound = models.BooleanField(
        "bound to its user", default=False, help_text="only its user (or staff) may connect"
    )
    options = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=20, choices=STATE_CHOICES)
    host = models.CharField(max_length=255, blank=True, null=True)
    port = models.PositiveIntegerField(blank=True, null=True)
    created = models.DateTimeField()
    started = models.DateTimeField(blank=True, null=True)
    ended = models.DateTimeField(blank=True, null=True)
    last_activity = models.DateTimeField(blank=True, null=True)
    ends_at = models.DateTimeField(
        blank=True, null=True, help_text="when its script said it ends (a job's time limit)"
    )
    end_reason = models.CharField(max_length=32, blank=True)
    message = models.TextField(blank=True)
    bytes_to_client = models.BigIntegerField(default=0)
    bytes_to_server = models.BigIntegerField(default=0)
    stop_timed_out = models.BooleanField(
        default=False, help_text="stop() did not return in time: check the instance by hand"
    )
    script_state = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("-created",)
        constraints = (
            models.UniqueConstraint(
                fields=["service", "index"],
                condition=~Q(state="ended"),
                name="one_live_session_per_instance",
            ),
        )
        indexes = (models.Index(fields=["state"], name="portal_session_state"),)

    def __str__(self) -> str:
        return f"{self.service} #{self.index} ({self.user or '-'}, {self.state})"


class SessionEvent(models.Model):
    """One line of a session's audit trail: reserved, connected, stopped, terminated, ..."""

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=20)
    at = models.DateTimeField()
    user = models.CharField(max_length=150, blank=True)
    client = models.CharField("client address", max_length=100, blank=True)
    detail = models.TextField(blank=True)
    key = models.CharField(
        max_length=32,
        unique=True,
        null=True,
        editable=False,
        help_text="random; a write tried again does not add the line twice",
    )

    class Meta:
        ordering = ("at", "id")
        indexes = (models.Index(fields=["session", "at"], name="portal_event_session_at"),)

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.kind}"


class ShareLink(models.Model):
    """A link that lets other users of the gateway watch a session, until it expires.

    Only the SHA-256 of the link's secret is stored; the link itself is shown once, to the
    user who made it.
    """

    session_id = models.CharField("session", max_length=16, db_index=True)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.CharField(max_length=150)
    created = models.DateTimeField()
    expires = models.DateTimeField()
    revoked = models.DateTimeField(blank=True, null=True)

    class Meta:
        ordering = ("-created",)

    def __str__(self) -> str:
        return f"share {self.pk} of session {self.session_id}"
