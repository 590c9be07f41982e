"""Catalogue inputs (JSON bodies, parsed YAML, CLI flags) as msgspec Structs: types, lengths and ranges are
`Meta` constraints, and the checks a type cannot say (time zones, routing policies, prices, expiry) run once in
`__post_init__`, keyed by field name. `decode` turns any failure into a 400 naming the field.

Create inputs require what a new object needs; change inputs leave every field `UNSET` unless it was given.
Strings are stripped; a blank optional reference (`team`, `user`, `secret`, `timezone`, `type`) means "none".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, ClassVar, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import msgspec.inspect
from msgspec import UNSET, Meta, UnsetType

from odock.errors import BadRequest
from odock.state.keys import MIN_SECRET_LENGTH
from odock.state.records import KeyType, ModelType
from odock.state.schema import utcnow

# column widths of odock.state.schema
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Ref = Annotated[str, Meta(max_length=320)]  # an id, or a name (e-mail for users) within the organisation
Email = Annotated[str, Meta(max_length=320)]
Slug = Annotated[str, Meta(min_length=1, max_length=300)]
Url = Annotated[str, Meta(max_length=2000)]
TimeZoneName = Annotated[str, Meta(max_length=64)]
Credential = Annotated[str, Meta(max_length=8000)]
Secret = Annotated[str, Meta(max_length=500)]
Milliseconds = Annotated[int, Meta(gt=0, le=2_147_483_647)]  # an INTEGER column
Capability = Annotated[str, Meta(min_length=1, max_length=200)]
Object = dict[str, Any]
# checked in `Input.__post_init__` (`expiry`): a future ISO 8601 instant or date, naive meaning UTC
Expiry = Annotated[
    Any, Meta(description="ISO 8601 date-time in the future (naive: UTC); null or empty: never expires")
]
S = TypeVar("S", bound=msgspec.Struct)  # an `Input`, or another strict body Struct (budgets, quotas)


def parse_datetime(value: Any, field: str) -> datetime | None:
    """Parse an ISO 8601 instant or date (naive means UTC); None or "" means no value."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime.combine(value, time())
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise BadRequest(f"{field} must be an ISO 8601 date-time, e.g. 2027-01-01T00:00:00Z") from None
    else:
        raise BadRequest(f"{field} must be an ISO 8601 date-time")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def expiry(value: Any) -> datetime | None:
    """An expiry instant: none, or in the future (400 invalid_expiry when past)."""
    moment = parse_datetime(value, "expires_at")
    if moment is not None and moment <= utcnow():
        raise BadRequest("expires_at is in the past", "invalid_expiry")
    return moment


def _timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"timezone: unknown time zone {name!r}") from None
    return name


def _policies(policies: Object) -> Object:
    """A policy envelope, refused at write time when its routing, cache or safety section is malformed (it would be
    ignored)."""
    from odock.safety.policy import validate_safety
    from odock.state.cache_policy import validate_cache
    from odock.state.routing_policy import validate_routing

    problems = validate_routing(policies) + validate_cache(policies)
    if "safety" in policies:
        problems += validate_safety(policies["safety"])
    if problems:
        raise BadRequest("; ".join(problems), "invalid_policy")
    return policies


def _email(email: str) -> str:
    if "@" not in email:
        raise BadRequest("email must be an e-mail address")
    return email


def _base_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise BadRequest("base_url must start with http:// or https://")
    return url.rstrip("/")


def chosen_secret(secret: Any) -> str | None:
    """A key secret chosen by the caller (never stripped: it is compared byte for byte); none or blank: generate."""
    if secret is None or secret == "":
        return None
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH or secret != secret.strip():
        raise BadRequest(f"secret must be a string of at least {MIN_SECRET_LENGTH} characters, no spaces")
    return secret


def _pricing(pricing: Object, field: str = "pricing") -> Object:
    for name, price in pricing.items():
        if isinstance(price, dict):
            _pricing(price, f"{field}.{name}")
        elif (
            isinstance(price, bool)
            or not isinstance(price, int | float)
            or not math.isfinite(price)
            or price < 0
        ):
            raise BadRequest(f"{field}.{name} must be a non-negative number")
    return pricing


# checks that need more than a type, by field name (run on given, non-null values)
_FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "timezone": _timezone,
    "policies": _policies,
    "pricing": _pricing,
    "base_url": _base_url,
    "email": _email,
    "capabilities": lambda items: list(dict.fromkeys(items)),
}


class Input(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Strips strings, turns blank optional strings into None, then runs the field checks."""

    blank_is_none: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name == "secret" and isinstance(value, str):
                value = chosen_secret(value)
            elif isinstance(value, str):
                value = value.strip()
                if not value:
                    if name not in self.blank_is_none:
                        raise ValueError(f"{name} must be a non-empty string")
                    value = None
            if name == "expires_at" and value is not UNSET:
                value = expiry(value)
            elif value is not None and value is not UNSET and name in _FIELD_CHECKS:
                value = _FIELD_CHECKS[name](value)
            setattr(self, name, value)

    def given(self) -> dict[str, Any]:
        """The fields that were given, by name (a change's values)."""
        return {name: value for name, value in msgspec.structs.asdict(self).items() if value is not UNSET}


def decode(kind: type[S], data: Any, what: str) -> S:
    """Validate a plain mapping as `kind`, or raise 400 invalid_request naming `what` and the field."""
    if isinstance(data, Mapping) and not isinstance(data, dict):
        data = dict(data)
    if holds_nul(data):
        raise BadRequest(f"{what}: values must not contain NUL characters (PostgreSQL cannot store them)")
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as error:
        message = str(error)
        if message.startswith("Object contains unknown field"):
            message += f"; allowed: {', '.join(sorted(kind.__struct_fields__))}"
        elif message.startswith("Invalid enum value"):
            message += f"; allowed: {', '.join(_choices(kind, message.rpartition('$.')[2].rstrip('`')))}"
        raise BadRequest(f"{what}: {message}") from None


def _choices(kind: type[msgspec.Struct], field: str) -> list[str]:
    """The values a Literal field accepts (for the message naming them)."""
    for info in msgspec.inspect.type_info(kind).fields:  # type: ignore[attr-defined]
        if info.name == field:
            options = info.type.types if isinstance(info.type, msgspec.inspect.UnionType) else (info.type,)
            return [str(v) for t in options if isinstance(t, msgspec.inspect.LiteralType) for v in t.values]
    return []


class NewOrganisation(Input):
    name: Name
    timezone: TimeZoneName | None = None
    policies: Object | None = None
    blank_is_none: ClassVar[frozenset[str]] = frozenset({"timezone"})


class OrganisationChanges(Input):
    name: Name | UnsetType = UNSET
    timezone: TimeZoneName | UnsetType = UNSET
    policies: Object | UnsetType | None = UNSET


class NewTeam(Input):
    organisation: Ref
    name: Name
    policies: Object | None = None


class TeamChanges(Input):
    name: Name | UnsetType = UNSET
    policies: Object | UnsetType | None = UNSET


# a provider type is checked against the provider registry by the service (400 provider_type_unsupported,
# whatever the value's JSON type)
ProviderTypeName = Any


class NewUser(Input):
    organisation: Ref
    email: Email
    name: Name | None = None


class UserChanges(Input):
    email: Email | UnsetType = UNSET
    name: Name | UnsetType | None = UNSET


class NewProvider(Input):
    organisation: Ref
    name: Name
    type: ProviderTypeName
    base_url: Url
    api_key: Credential | None = None
    timeout_ms: Milliseconds | None = None
    enabled: bool = True
    config: Object | None = None
    blank_is_none: ClassVar[frozenset[str]] = frozenset({"api_key"})


class ProviderChanges(Input):
    name: Name | UnsetType = UNSET
    type: ProviderTypeName | UnsetType = UNSET
    base_url: Url | UnsetType = UNSET
    api_key: Credential | UnsetType | None = UNSET  # null or "" removes the credential
    timeout_ms: Milliseconds | UnsetType | None = UNSET
    enabled: bool | UnsetType = UNSET
    config: Object | UnsetType | None = UNSET
    blank_is_none: ClassVar[frozenset[str]] = frozenset({"api_key"})


class NewModel(Input):
    organisation: Ref
    name: Name
    provider: Ref
    slug: Slug
    type: ModelType | None = None
    capabilities: list[Capability] | None = None
    pricing: Object | None = None
    policies: Object | None = None
    config: Object | None = None


class ModelChanges(Input):
    name: Name | UnsetType = UNSET
    provider: Ref | UnsetType = UNSET
    slug: Slug | UnsetType = UNSET
    type: ModelType | UnsetType = UNSET
    capabilities: list[Capability] | UnsetType | None = UNSET
    pricing: Object | UnsetType | None = UNSET
    policies: Object | UnsetType | None = UNSET
    config: Object | UnsetType | None = UNSET


class NewKey(Input):
    organisation: Ref
    name: Name
    type: KeyType | None = None
    team: Ref | None = None
    user: Ref | None = None
    expires_at: Expiry = None
    timezone: TimeZoneName | None = None
    policies: Object | None = None
    secret: Secret | None = None  # none: generated
    models: list[Ref] | None = None
    blank_is_none: ClassVar[frozenset[str]] = frozenset({"team", "user", "timezone"})


class KeyChanges(Input):
    name: Name | UnsetType = UNSET
    type: KeyType | UnsetType = UNSET
    team: Ref | UnsetType | None = UNSET
    user: Ref | UnsetType | None = UNSET
    expires_at: Expiry = UNSET
    timezone: TimeZoneName | UnsetType = UNSET
    policies: Object | UnsetType | None = UNSET
    revoked: bool | UnsetType = UNSET
    blank_is_none: ClassVar[frozenset[str]] = frozenset({"team", "user"})


class KeyRotation(Input):
    """`POST /admin/keys/{ref}/rotate`: the rotated key's new expiry (none: never expires)."""

    expires_at: Expiry = None


class NewGrant(Input):
    """`POST /admin/keys/{ref}/grants`: the model (name or id) the key may use."""

    model: Ref | None = None
    model_id: Ref | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.model or self.model_id):
            raise ValueError('give the model as {"model": "<name or id>"}')


def ownership(key_type: str, team_id: str | None, user_id: str | None) -> None:
    """Refuse an owner the key type forbids, or a missing owner it requires (reference §3.3)."""
    if key_type == "ORGANISATION" and (team_id or user_id):
        raise BadRequest("an ORGANISATION key must not have a team or a user", "invalid_key_ownership")
    if key_type == "TEAM" and (not team_id or user_id):
        raise BadRequest("a TEAM key requires a team and must not have a user", "invalid_key_ownership")
    if key_type == "USER" and (not user_id or team_id):
        raise BadRequest("a USER key requires a user and must not have a team", "invalid_key_ownership")


def text(value: Any, field: str, *, max_len: int = 320) -> str:
    """A non-empty string of at most `max_len` characters, stripped (references given outside a body)."""
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{field} must be a non-empty string")
    stripped: str = value.strip()
    if len(stripped) > max_len:
        raise BadRequest(f"{field} is longer than {max_len} characters")
    return stripped


def holds_nul(value: Any) -> bool:
    """Whether a JSON value has a NUL character in any string or key (TEXT and JSONB columns refuse them)."""
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            pending.extend(node)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


# provider `config` keys the gateway reads itself on every call (the rest is free-form)
PROVIDER_TIMEOUTS = ("connect_timeout_ms", "first_byte_timeout_ms")


def provider_config(config: dict[str, Any]) -> dict[str, Any]:
    """A provider's `config`, its timeouts checked here: a bad one would fail every call to the provider."""
    for name in PROVIDER_TIMEOUTS:
        timeout = config.get(name)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 2**31 - 1
        ):
            raise BadRequest(f"provider: config.{name} must be a positive number of milliseconds")
    return config
