"""The Django admin (``/admin/``, administrators only): users and groups.

A session type whose ``options.group`` names a group is for the members of that group; the
user list shows each user's groups so an administrator sees at a glance who may use what.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import QuerySet
from django.http import HttpRequest

from vizgate.web.portal.throttle import ThrottledLoginMixin

__all__ = ["AdminLoginForm", "GroupAdmin", "UserAdmin"]

if TYPE_CHECKING:
    _UserAdminBase = DjangoUserAdmin[User]
else:
    # Django's admin classes are generic for type checkers only.
    _UserAdminBase = DjangoUserAdmin


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    """The admin's login form, behind the same failed-login throttle as the portal's."""


admin.site.login_form = AdminLoginForm
admin.site.site_header = "vizgate administration"
admin.site.site_title = "vizgate"
admin.site.index_title = "Users and groups"
admin.site.site_url = "/"


@admin.display(description="groups")
def _group_names(user: User) -> str:
    return ", ".join(group.name for group in user.groups.all()) or "-"


class UserAdmin(_UserAdminBase):
    """Users, with their groups and whether they are administrators."""

    list_display = (
        "username",
        "first_name",
        "last_name",
        "is_active",
        "is_staff",
        _group_names,
        "last_login",
    )
    list_filter = ("is_staff", "is_superuser", "is_active", "groups")

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        # The groups column would query once per row without this.
        return super().get_queryset(request).prefetch_related("groups")


class GroupAdmin(DjangoGroupAdmin):
    """Groups, with how many members each has."""

    list_display = ("name", "member_count")

    @admin.display(description="members")
    def member_count(self, group: Group) -> int:
        return group.user_set.count()


admin.site.unregister(User)
admin.site.register(User, UserAdmin)
admin.site.unregister(Group)
admin.site.register(Group, GroupAdmin)
