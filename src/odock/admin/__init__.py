"""odock.admin: the admin HTTP API (`create_admin_app`)."""

from odock.admin.app import create_admin_app

__all__ = ["create_admin_app"]
