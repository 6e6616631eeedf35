"""The portal's URLs."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from vizgate.web.portal import share_views, status_views, usage_views, views
from vizgate.web.portal.forms import LoginForm

__all__ = ["app_name", "urlpatterns"]

app_name = "portal"

urlpatterns = [
    path("", views.catalogue, name="catalogue"),
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="portal/login.html",
            authentication_form=LoginForm,
            redirect_authenticated_user=True,
        ),
        name="login",
    ),
    # Django's LogoutView answers POST only: a link or an image elsewhere cannot log anyone out.
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("launch", views.launch, name="launch"),
    path("sessions/", views.my_sessions, name="sessions"),
    path("sessions/<str:session_id>/", views.viewer, name="viewer"),
    path("sessions/<str:session_id>/status", views.session_status, name="session_status"),
    path("sessions/<str:session_id>/end", views.end_session, name="end"),
    path("sessions/<str:session_id>/share", share_views.share, name="share"),
    path(
        "sessions/<str:session_id>/share/<int:link_id>/withdraw",
        share_views.revoke_share_link,
        name="revoke_share",
    ),
    path("share/", share_views.open_pending_share, name="open_pending_share"),
    path("share/<str:secret>/", share_views.open_share, name="open_share"),
    path("status/", status_views.status, name="status"),
    path("status/pause", status_views.pause, name="pause"),
    path("status/resume", status_views.resume, name="resume"),
    path("status/node/end", status_views.end_node_sessions, name="end_node_sessions"),
    path("status/usage", usage_views.usage, name="usage"),
    path("status/usage.csv", usage_views.usage_csv, name="usage_csv"),
    path("status/notice", status_views.post_notice, name="post_notice"),
    path("status/notice/withdraw", status_views.withdraw_notice, name="withdraw_notice"),
    path("status/<str:session_id>/", views.session_detail, name="session_detail"),
    path("status/<str:session_id>/terminate", views.terminate, name="terminate"),
]
