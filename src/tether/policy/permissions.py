"""Least privilege: which tools a principal may have an agent use, for which task, for how long.

A policy maps principals to roles and roles (or principals) to tool scopes per task type; whatever no
grant allows is denied. A run acts with the permissions of the principal it serves, never more: its
grant is computed from the policy when a tool is called and is valid for `grant_ttl_s` (default one
hour) from the run's start — a run parked for a day needs a person to extend it (`Runtime.answer`).

    [[grants]]                     # a rule: who, for what task, which tools
    name = "support-refunds"
    roles = ["support"]            # or principals = ["alice"]; both may be given
    tasks = ["refunds", "support"] # the agent's name or one of its tags; omitted: any task
    tools = ["lookup_order", "check_refund_policy", "issue_refund"]   # fnmatch patterns

    [principals]                   # principal -> roles
    "cust-*" = ["customer"]        # patterns allowed
    alice = ["support", "lead"]

    deny_tools = ["delete_*"]      # never, whoever asks (a denylist over every grant)

Denied calls return an actionable error to the agent; every decision goes to the audit log.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.errors import ConfigurationError

DEFAULT_GRANT_TTL_S = 3600.0


@dataclass(frozen=True, slots=True)
class GrantRule:
    """Principals (or roles) may use these tools for these task types."""

    name: str
    tools: tuple[str, ...]
    roles: tuple[str, ...] = ()
    principals: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()  # empty: any task
    ttl_s: float | None = None  # None: the policy's grant_ttl_s

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("a grant needs a name (it is written to the audit log)")
        if not self.tools:
            raise ConfigurationError(f"grant {self.name!r} lists no tools")
        if not self.roles and not self.principals:
            raise ConfigurationError(f"grant {self.name!r} names neither roles nor principals")
        if self.ttl_s is not None and self.ttl_s <= 0:
            raise ConfigurationError(f"grant {self.name!r}: ttl_s must be > 0")

    def covers(self, principal: str | None, roles: Iterable[str], tasks: Iterable[str], tool: str) -> bool:
        if not any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.tools):
            return False
        if self.tasks and not set(self.tasks) & set(tasks):
            return False
        by_principal = principal is not None and any(
            fnmatch.fnmatchcase(principal, pattern) for pattern in self.principals
        )
        return by_principal or bool(set(self.roles) & set(roles))


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one permission check, as the audit log records it."""

    allowed: bool
    tool: str
    principal: str | None
    grant: str | None  # the rule that allowed it
    reason: str  # why: for the agent on a denial, for the auditor always

    def message_for_model(self) -> str:
        return (
            f"Permission denied: {self.reason}. Do not retry this call; continue without it, or tell the "
            "user a person must do it."
        )


@dataclass(frozen=True, slots=True)
class PermissionPolicy:
    """Deny by default: a call is allowed only by a grant covering its principal, task and tool,
    within the grant's time bound, and by no entry of `deny_tools`."""

    grants: Sequence[GrantRule] = ()
    principals: Mapping[str, Sequence[str]] = field(default_factory=dict)  # principal pattern -> roles
    deny_tools: Sequence[str] = ()
    grant_ttl_s: float = DEFAULT_GRANT_TTL_S

    def __post_init__(self) -> None:
        if self.grant_ttl_s <= 0:
            raise ConfigurationError("permissions: grant_ttl_s must be > 0")
        names = [grant.name for grant in self.grants]
        if len(names) != len(set(names)):
            raise ConfigurationError("permissions: two grants have the same name")

    def roles_of(self, principal: str | None) -> set[str]:
        if principal is None:
            return set()
        return {
            role
            for pattern, roles in self.principals.items()
            if fnmatch.fnmatchcase(principal, pattern)
            for role in roles
        }

    def check(
        self,
        *,
        principal: str | None,
        tasks: Iterable[str],
        tool: str,
        age_s: float,
    ) -> Decision:
        """May `principal`'s run of these task types, `age_s` seconds after it started, call `tool`?"""
        if any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.deny_tools):
            return Decision(False, tool, principal, None, f"tool {tool!r} is on the deny list")
        if principal is None:
            return Decision(
                False, tool, None, None, f"the run serves no principal, so it has no grant for {tool!r}"
            )
        tasks = tuple(tasks)
        roles = self.roles_of(principal)
        expired: GrantRule | None = None
        for grant in self.grants:
            if not grant.covers(principal, roles, tasks, tool):
                continue
            ttl = grant.ttl_s if grant.ttl_s is not None else self.grant_ttl_s
            if age_s > ttl:
                expired = grant
                continue
            return Decision(True, tool, principal, grant.name, f"granted by {grant.name!r}")
        if expired is not None:
            return Decision(
                False,
                tool,
                principal,
                expired.name,
                f"grant {expired.name!r} for {tool!r} expired (the run is {age_s / 60:.0f} min old); "
                "a person can run it again",
            )
        who = f"{principal!r}" + (f" (roles {', '.join(sorted(roles))})" if roles else " (no roles)")
        return Decision(
            False,
            tool,
            principal,
            None,
            f"no grant lets {who} use {tool!r} for {', '.join(tasks) or 'this task'}",
        )

    @classmethod
    def from_file(cls, path: str | Path) -> PermissionPolicy:
        """Read a policy file (TOML, see the module docstring); errors name the file and the key."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigurationError(f"permissions file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"permissions file {str(path)!r} is not valid TOML: {exc}") from None
        return cls.from_mapping(data, where=str(path))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "permissions") -> PermissionPolicy:
        known = {"grants", "principals", "deny_tools", "grant_ttl_s"}
        unknown = set(data) - known
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        grants = []
        for index, raw in enumerate(data.get("grants", ())):
            if not isinstance(raw, Mapping):
                raise ConfigurationError(f"{where}: grants[{index}] must be a table")
            allowed = {"name", "tools", "roles", "principals", "tasks", "ttl_s"}
            extra = set(raw) - allowed
            if extra:
                raise ConfigurationError(
                    f"{where}: grants[{index}] has unknown key(s) {', '.join(sorted(extra))}; "
                    f"known: {', '.join(sorted(allowed))}"
                )
            try:
                grants.append(
                    GrantRule(
                        name=str(raw.get("name", "")),
                        tools=_strings(raw.get("tools", ()), f"{where}: grants[{index}].tools"),
                        roles=_strings(raw.get("roles", ()), f"{where}: grants[{index}].roles"),
                        principals=_strings(
                            raw.get("principals", ()), f"{where}: grants[{index}].principals"
                        ),
                        tasks=_strings(raw.get("tasks", ()), f"{where}: grants[{index}].tasks"),
                        ttl_s=None if raw.get("ttl_s") is None else float(raw["ttl_s"]),
                    )
                )
            except ConfigurationError as exc:
                raise ConfigurationError(f"{where}: grants[{index}]: {exc}") from None
        principals = {
            str(name): _strings(roles, f"{where}: principals.{name}")
            for name, roles in dict(data.get("principals", {})).items()
        }
        return cls(
            grants=tuple(grants),
            principals=principals,
            deny_tools=_strings(data.get("deny_tools", ()), f"{where}: deny_tools"),
            grant_ttl_s=float(data.get("grant_ttl_s", DEFAULT_GRANT_TTL_S)),
        )


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigurationError(f"{where} must be a list of strings, not {value!r}")
    if not all(isinstance(item, str) and item for item in value):
        raise ConfigurationError(f"{where} must be a list of non-empty strings, not {value!r}")
    return tuple(value)
