"""The admin catalog: GPU types, teams, quotas and profiles from one YAML file."""

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

__all__ = [
    "Catalog",
    "CatalogError",
    "Choice",
    "Culling",
    "GPURequest",
    "GPUType",
    "Metering",
    "Problem",
    "Profile",
    "ProfileOption",
    "Quota",
    "Team",
    "UnlistedChoice",
    "load_catalog",
    "parse_catalog",
]
