"""Releases: a user tower, an item tower and the catalog it embedded, served as one numbered
version of every model, switched on a running server without mixing (`towerlite release`)."""

from .release import ReleaseRequest, release, rollback
from .store import current_release, next_release, releases
from .switch import switch

__all__ = ["ReleaseRequest", "current_release", "next_release", "release", "releases",
           "rollback", "switch"]
