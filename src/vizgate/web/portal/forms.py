"""The portal's forms: logging in and launching a session."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm

from vizgate.sessions import ServiceInfo
from vizgate.web.portal.throttle import ThrottledLoginMixin

__all__ = ["LaunchForm", "LoginForm"]


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    """Django's login form, with the attributes password managers look for, saying so when
    failed logins have locked the account out at this address for now."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["username"].widget.attrs.update(
            {"autocomplete": "username", "autocapitalize": "none"}
        )
        self.fields["password"].widget.attrs.update({"autocomplete": "current-password"})


#: The launch form's field of a choice (:mod:`vizgate.choices`) is this prefix and its name.
CHOICE_FIELD_PREFIX = "choice_"


class LaunchForm(forms.Form):
    """Launch a session: which type, at which size and with which choices
    (``choice_NAME`` fields, passed on as picked), among the types the user may use.

    Args:
        data: the POST data.
        services: the session types the user may use.
    """

    service = forms.CharField(max_length=1000)
    size = forms.CharField(max_length=40, required=False)

    def __init__(self, data: object, *, services: Sequence[ServiceInfo]) -> None:
        super().__init__(data)  # type: ignore[arg-type]
        self._services = {info.name: info for info in services}

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        name = cleaned.get("service", "")
        info = self._services.get(name)
        if info is None:
            raise forms.ValidationError(
                "there is no session type by that name for you", code="unknown_type"
            )
        size = cleaned.get("size") or info.sizes[0]
        if size not in info.sizes:
            raise forms.ValidationError(
                f"{size} is not a size offered for {name}; choose one of " + ", ".join(info.sizes),
                code="bad_option",
            )
        cleaned["size"] = size
        # Only the type's own choices go on; the broker settles them (vizgate.choices).
        cleaned["choices"] = {
            choice: str(self.data.get(CHOICE_FIELD_PREFIX + choice, "")) for choice in info.choices
        }
        return cleaned
