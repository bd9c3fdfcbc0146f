"""The admin catalog: GPU types, teams, quotas, profiles, the wait-list, notifications and
borrowing from one YAML file."""

from .borrowing import Borrowing
from .loader import load_catalog, parse_catalog
from .problems import CatalogError, Problem
from .schema import (
    Catalog,
    Choice,
    Culling,
    GPURequest,
    GPUType,
    Metering,
    Profile,
    ProfileOption,
    Quota,
    Team,
    UnlistedChoice,
)
from .waitlist import EmailNotifications, Notifications, Waitlist, WebhookNotifications

__all__ = [
    "Borrowing",
    "Catalog",
    "CatalogError",
    "Choice",
    "Culling",
    "EmailNotifications",
    "GPURequest",
    "GPUType",
    "Metering",
    "Notifications",
    "Problem",
    "Profile",
    "ProfileOption",
    "Quota",
    "Team",
    "UnlistedChoice",
    "Waitlist",
    "WebhookNotifications",
    "load_catalog",
    "parse_catalog",
]
