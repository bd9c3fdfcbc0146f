"""The typed schema of the admin catalog YAML: GPU types, teams, quotas, profiles, the GPU
wait-list and notifications.

One definition validates the file, freezes it for the rest of the code, exports a JSON Schema for
editors and generates docs/reference/catalog.md. It does no I/O. Value types live in `values.py`,
the wait-list and notification sections in `waitlist.py`. Checks that span sections (a profile
naming an unknown GPU type, duplicate slugs) live in `references.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from slugify import slugify

from .borrowing import Borrowing as Borrowing
from .budget_alerts import AlertRecipients as AlertRecipients
from .budget_alerts import BudgetAlerts as BudgetAlerts
from .values import (
    NAME_PATTERN as NAME_PATTERN,
)
from .values import (
    Count,
    Duration,
    FrozenMap,
    GiB,
    GPUHours,
    Model,
    Money,
    Name,
    Override,
    Regex,
)
from .waitlist import EmailNotifications as EmailNotifications
from .waitlist import Notifications as Notifications
from .waitlist import Waitlist as Waitlist
from .waitlist import WebhookNotifications as WebhookNotifications

# --- GPU types ---------------------------------------------------------------------------------


class Toleration(Model):
    """A Kubernetes toleration, spelled as in a pod spec."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: StrictInt | None = Field(None, alias="tolerationSeconds")


class GPUType(Model):
    """A kind of GPU (or MIG slice) that profiles can request."""

    display_name: str = Field(description="Name shown to users, e.g. 'NVIDIA H100 80GB'.")
    resource: str = Field(
        "nvidia.com/gpu",
        pattern=r"^[a-z0-9.-]+/[A-Za-z0-9._-]+$",
        description="Kubernetes extended resource requested per GPU: `nvidia.com/gpu`, or a MIG "
        "resource such as `nvidia.com/mig-1g.10gb`.",
    )
    price_per_hour: Money = Field(description="Price of one GPU of this type for one hour.")
    node_selector: FrozenMap[str, str] = Field(
        default_factory=dict, description="Node labels that place pods on nodes of this type."
    )
    tolerations: tuple[Toleration, ...] = Field(
        (), description="Tolerations for the taints of this type's node pool."
    )
    gpus_per_node: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="GPUs (or MIG slices) of this type on one node; caps `gpu.count`."
    )
    memory_gib: GiB | None = Field(
        None,
        description="GPU memory of one GPU (or MIG slice) of this type in GiB, e.g. 80 for an "
        "H100 80GB, 10 for a 1g.10gb slice. Absent: unknown (no memory-based advice).",
    )
    device_names: tuple[str, ...] = Field(
        (),
        description="Local mode: NVML device names (e.g. 'NVIDIA H100 80GB HBM3') that are this "
        "type. MIG types match MIG device profile names such as '1g.10gb'.",
    )
    mig_parent: str | None = Field(
        None,
        description="Local mode, MIG types only: part of the NVML name of the GPU the slices are "
        "cut from, such as 'H100' or 'A100-SXM4-80GB', compared case-insensitively; a MIG device "
        "is this type only if its profile matches and its parent GPU's name contains this text. "
        "Absent: slices of any GPU with a matching profile, unless another type with the same "
        "profile names their GPU; two such types with the same profile and no `mig_parent` are "
        "ambiguous and get no devices.",
    )
    autoscaled: StrictBool = Field(
        False,
        description="True when a cluster autoscaler adds nodes of this type on demand. The "
        "wait-list then serves requests for this type in their order without checking for free "
        "GPUs, and a server's pod may wait (Pending) until a new node comes up. False: the "
        "wait-list gives a turn only when GPUs of this type are free.",
    )
    scale_up_timeout: Duration | None = Field(
        "15m",
        validate_default=True,
        description="Autoscaled types only: how long a server of this type may take to start "
        "(the spawner's `start_timeout`), long enough for a new node to come up. Ignored when "
        "`autoscaled` is false. Null: the spawner's usual `start_timeout`.",
    )

    @field_validator("mig_parent")
    @classmethod
    def _mig_parent_of_a_mig_type(cls, parent: str | None, info: ValidationInfo) -> str | None:
        if parent is None:
            return None
        if not parent.strip():
            raise ValueError(
                "mig_parent is empty; give part of the parent GPU's NVML name (`nvidia-smi -L`), "
                "such as 'H100', or leave mig_parent out"
            )
        resource = info.data.get("resource")
        if isinstance(resource, str) and not resource.startswith("nvidia.com/mig-"):
            raise ValueError(
                f"mig_parent is only for MIG types, and resource is {resource!r}; remove "
                "mig_parent, or set resource to a MIG resource such as nvidia.com/mig-1g.10gb"
            )
        return parent.strip()

    @property
    def is_mig(self) -> bool:
        """True for a MIG slice resource (`nvidia.com/mig-<profile>`)."""
        return self.resource.startswith("nvidia.com/mig-")


# --- teams -------------------------------------------------------------------------------------


class Leads(Model):
    """Who leads a team (sees its usage page)."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


class Quota(Model):
    """Limits of one team. An absent limit is no limit, except `gpus`: a GPU type that is not
    listed there cannot be used by the team at all."""

    gpus: FrozenMap[str, Count] = Field(
        default_factory=dict,
        description="Concurrent GPUs per GPU type that the team's running servers may hold.",
    )
    gpus_per_user: Count | None = Field(
        None, description="Concurrent GPUs one user of the team may hold, over all GPU types."
    )
    monthly_gpu_hours: GPUHours | None = Field(
        None, description="GPU-hours the team may use per calendar month (UTC)."
    )
    budget_warning_percent: Annotated[StrictInt, Field(ge=1, le=100)] = Field(
        80, description="Warn users when this percentage of the monthly budget is used."
    )
    stop_running_over_budget_after: Duration | None = Field(
        None,
        description="When the budget is used up, stop running GPU servers after this grace "
        "period. Absent: running servers are left alone and only new GPU servers are refused.",
    )
    borrow_limit: FrozenMap[str, Count] = Field(
        default_factory=dict,
        description="GPUs per GPU type that the team's servers may hold on other teams' "
        "unallocated quota at once (needs the `borrowing` section). Absent type: it borrows "
        "none of it.",
    )
    lend_limit: FrozenMap[str, Count] = Field(
        default_factory=dict,
        description="GPUs per GPU type of the team's quota that other teams may borrow at once "
        "(when `borrowing` is on). Absent type: all of its unallocated quota.",
    )
    budget_alerts: BudgetAlerts | None = Field(
        None,
        description="Email and webhook alerts to the team's leads and the admins as the team "
        "crosses shares of `monthly_gpu_hours` ([budget alerts](../how-to/budget-alerts.md)). "
        "Absent: no alerts.",
    )

    @model_validator(mode="after")
    def _alerts_need_a_budget(self) -> Quota:
        if self.budget_alerts is not None and self.monthly_gpu_hours is None:
            raise ValueError(
                "budget_alerts needs a budget: set monthly_gpu_hours, or remove budget_alerts"
            )
        return self


class Team(Model):
    """A group of users that shares quotas and a budget."""

    display_name: str | None = None
    groups: tuple[str, ...] = Field(
        (), description="Identity-provider groups (JupyterHub groups) whose members are the team."
    )
    users: tuple[str, ...] = Field((), description="Users in the team besides its groups.")
    leads: Leads = Field(default_factory=Leads)
    quota: Quota = Field(default_factory=Quota)
    profiles: tuple[str, ...] | None = Field(
        None,
        description="Slugs of the profiles the team may use. Absent: every profile whose "
        "`allowed_teams` lets it.",
    )
    namespace: Name | None = Field(
        None, description="Kubernetes namespace of the team's pods (overrides the template)."
    )


# --- profiles (a superset of z2jh's singleuser.profileList) -----------------------------------


class GPURequest(Model):
    """The GPUs a profile's server holds."""

    type: str = Field(description="A key of `gpu_types`.")
    count: StrictInt = Field(1, description="GPUs of that type; at least 1.")

    @field_validator("count")
    @classmethod
    def _positive(cls, count: int) -> int:
        if count < 1:
            raise ValueError(
                f"gpu.count must be at least 1 (got {count}); for a CPU-only profile remove `gpu`"
            )
        return count


GROUPS_NOTE = (
    "Only members of these JupyterHub groups see {what} and may choose it; group names compare "
    "case-insensitively, as in 2i2c's profile filter. Absent: everyone. Empty: nobody."
)


class Choice(Model):
    """One predefined choice of a profile option. Its key in `choices` is what the form and
    `user_options` send."""

    display_name: str
    description: str | None = None
    default: StrictBool = False
    kubespawner_override: Override = Field(default_factory=dict)
    slug: str | None = Field(
        None,
        description="Accepted from existing profile lists and ignored, as KubeSpawner ignores "
        "it: the choice's key identifies it.",
    )
    allowed_groups: tuple[str, ...] | None = Field(
        None, description=GROUPS_NOTE.format(what="the choice")
    )


class UnlistedChoice(Model):
    """A free-form value a user may type instead of a predefined choice."""

    enabled: StrictBool = False
    display_name: str | None = None
    display_name_in_choices: str | None = None
    validation_regex: Regex | None = None
    validation_message: str | None = None
    kubespawner_override: Override = Field(
        default_factory=dict, description="`{value}` in any string is replaced by the user's text."
    )
    allowed_groups: tuple[str, ...] | None = Field(
        None, description=GROUPS_NOTE.format(what="the free-text field")
    )


class ProfileOption(Model):
    """A choice within a profile, e.g. the image."""

    display_name: str
    choices: FrozenMap[str, Choice] = Field(default_factory=dict)
    unlisted_choice: UnlistedChoice = Field(default_factory=UnlistedChoice)

    @model_validator(mode="after")
    def _has_a_choice(self) -> ProfileOption:
        if not self.choices and not self.unlisted_choice.enabled:
            raise ValueError("an option needs `choices` or an enabled `unlisted_choice`")
        return self


def _slug_is_optional(schema: dict[str, Any]) -> None:
    schema["required"] = [name for name in schema.get("required", []) if name != "slug"]


class Profile(Model):
    """A server profile. Every key of a z2jh `singleuser.profileList` entry is accepted as is;
    `gpu`, `allowed_teams` and the timeouts are this platform's additions."""

    model_config = ConfigDict(json_schema_extra=_slug_is_optional)

    display_name: str
    slug: Name = Field(description="Defaults to a slug of `display_name`, as KubeSpawner does.")
    description: str = ""
    default: StrictBool = False
    kubespawner_override: Override = Field(default_factory=dict)
    profile_options: FrozenMap[str, ProfileOption] = Field(default_factory=dict)
    allowed_groups: tuple[str, ...] | None = Field(
        None, description=GROUPS_NOTE.format(what="the profile")
    )
    gpu: GPURequest | None = Field(None, description="Absent: a CPU-only profile.")
    allowed_teams: tuple[str, ...] | None = Field(
        None, description="Teams that may use the profile. Absent: every team."
    )
    idle_timeout: Duration | None = Field(None, description="Overrides `culling.idle_timeout`.")
    gpu_idle_timeout: Duration | None = Field(
        None, description="Overrides `culling.gpu_idle_timeout`."
    )
    max_age: Duration | None = Field(None, description="Overrides `culling.max_age`.")

    @model_validator(mode="before")
    @classmethod
    def _default_slug(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "slug" not in data:
            name = data.get("display_name")
            if isinstance(name, str):
                return {**data, "slug": slugify(name)}
        return data


# --- defaults ----------------------------------------------------------------------------------


class Culling(Model):
    """Defaults for idle culling; profiles may override the timeouts."""

    idle_timeout: Duration | None = Field(
        "1h",
        validate_default=True,
        description="Stop a server with no kernel or terminal activity.",
    )
    gpu_idle_timeout: Duration | None = Field(
        "30m",
        validate_default=True,
        description="Stop a GPU server whose GPUs stay below the utilisation threshold.",
    )
    gpu_utilization_percent: Annotated[StrictInt, Field(ge=0, le=100)] = Field(
        5, description="At or below this GPU utilisation a GPU counts as idle."
    )
    max_age: Duration | None = Field(None, description="Stop any server older than this.")
    interval: Duration = Field(
        "1m", validate_default=True, description="How often the culler looks."
    )
    warn_before: Duration = Field(
        "10m",
        validate_default=True,
        description="How long before stopping an idle server JupyterLab warns its user (with "
        "a Keep button).",
    )


class Metering(Model):
    """Billing and reconciliation settings."""

    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code of all prices.")
    reconcile_interval: Duration = Field(
        "30s",
        validate_default=True,
        description="How often the gpuhub service reconciles billing with what runs (and "
        "enforces budgets). A server that dies unseen is billed at most this much too long.",
    )
    start_grace: Duration = Field(
        "10m",
        validate_default=True,
        description="How long an admitted server may take to start before its session is "
        "closed as failed (the hub died mid-spawn), and how long a stopped server may take to "
        "go before it is billed again. Make it longer than the spawner's start_timeout.",
    )


class Kubernetes(Model):
    """Kubernetes placement."""

    namespace_template: str | None = Field(
        None,
        description="Namespace of a team's pods, with `{team}` replaced by the team's key and "
        "`{install}` by the install's name, e.g. `gpuhub-{team}`. Several installs (hubs) on "
        "one cluster need `{install}` in it (e.g. `gpuhub-{install}-{team}`): a team namespace "
        "another install made is never used. Absent: the hub's namespace for everyone.",
    )

    @field_validator("namespace_template")
    @classmethod
    def _has_team(cls, template: str | None) -> str | None:
        if template is not None and "{team}" not in template:
            raise ValueError("the template must contain {team}, e.g. gpuhub-{team}")
        return template


class Catalog(Model):
    """The whole admin catalog: one YAML file."""

    gpu_types: FrozenMap[Name, GPUType] = Field(
        default_factory=dict, description="GPU types by key; profiles and quotas name the keys."
    )
    teams: FrozenMap[Name, Team] = Field(default_factory=dict, description="Teams by key.")
    profiles: tuple[Profile, ...] = Field(
        description="Server profiles: a z2jh `singleuser.profileList`, plus this platform's keys."
    )
    culling: Culling = Field(default_factory=Culling)
    metering: Metering = Field(default_factory=Metering)
    kubernetes: Kubernetes = Field(default_factory=Kubernetes)
    waitlist: Waitlist = Field(default_factory=Waitlist)
    notifications: Notifications = Field(default_factory=Notifications)
    borrowing: Borrowing | None = Field(
        None,
        description="Borrowing of other teams' unallocated GPU quota, and its reclaim "
        "([lend and borrow GPUs](../how-to/borrow-gpus.md)). Absent: quotas are hard walls.",
    )

    def profile(self, slug: str) -> Profile | None:
        """The profile with this slug, or None."""
        return next((p for p in self.profiles if p.slug == slug), None)
