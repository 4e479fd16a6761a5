"""The config file as pydantic models: the one source of truth (JSON Schema comes from here)."""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

NAME_RE = r"^[A-Za-z_][A-Za-z0-9_\-]*$"

FieldTypeName = Literal[
    "string", "integer", "decimal", "boolean", "date", "datetime", "choice", "reference",
    "document", "list",
]


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must never be silently ignored.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DeletedMarker(_Strict):
    """How a soft-deleted record is recognised at the source."""

    field: str = Field(description="field holding the deleted flag or status")
    value: Any = Field(True, description="value meaning 'deleted'")


class ObjectConfig(_Strict):
    """One object (record type) of a SQL system."""

    table: str = Field(description="table name (checked against the live schema)")
    key: str = Field(description="primary or unique key column")
    updated_at: str | None = Field(
        None, description="column stamped on every change; enables incremental capture"
    )
    deleted: DeletedMarker | None = Field(
        None, description="soft-delete marker: a record with this value is treated as deleted"
    )
    lookback: float = Field(
        2.0,
        ge=0,
        description="seconds re-read before the cursor on every poll, to catch rows "
        "stamped at or just before it but written later (coarse clocks such as MariaDB "
        "DATETIME, late commits); the overlap is applied again and found unchanged",
    )
    schema_name: str | None = Field(None, alias="schema", description="database schema")
    anonymize: dict[str, Any] | None = Field(
        None,
        description="GDPR erasure: field: replacement value written by `crmsync erase`",
    )


class QuotaConfig(_Strict):
    """An API budget: at most ``calls`` connector calls per ``per`` window."""

    calls: int = Field(ge=1, description="calls allowed per window")
    per: str = Field("24h", description="window length: 1h, 24h, 7d ...")
    rate: float | None = Field(
        None,
        gt=0,
        description="also at most this many calls per second, on average (bursts of up to "
        "one second's worth); calls over it make later work wait, none is dropped",
    )

    @field_validator("per")
    @classmethod
    def _per(cls, v: str) -> str:
        from crmsync.schedule import parse_duration

        parse_duration(v)
        return v

    @property
    def window_s(self) -> int:
        from crmsync.schedule import parse_duration

        return parse_duration(self.per)


class _System(_Strict):
    """What every kind of system has: a deep-link template and named objects."""

    links_to: str | None = Field(
        None,
        description="deep-link URL template of a record, with {object} and {id} (and "
        "{system}), e.g. https://crm.example.com/#/{object}/{id}",
    )

    @field_validator("objects", check_fields=False)
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not re.match(NAME_RE, name):
                raise ValueError(f"object name {name!r} must match {NAME_RE}")
        return v


class ActivitiesConfig(_Strict):
    """Where a rule's ``activity`` action writes in a SQL system: one row per event."""

    table: str = Field(description="activity table (checked against the live schema)")
    record: str = Field(description="column that holds the record's key")
    subject: str = Field(description="column for the rendered subject")
    body: str | None = Field(None, description="column for the rendered body")
    at: str | None = Field(None, description="column for the time the rule fired")
    schema_name: str | None = Field(None, alias="schema", description="database schema")


class SystemConfig(_System):
    """A system reached through SQL (any SQLAlchemy URL)."""

    connector: Literal["sql"] = Field(description="how crmsync reaches the system")
    url: str = Field(description="SQLAlchemy URL; use ${VAR} for secrets")
    objects: dict[str, ObjectConfig] = Field(min_length=1)
    webhook_secret: str | None = Field(
        None,
        description="Standard Webhooks secret (whsec_...) for POST /hooks/SYSTEM; use ${VAR}",
    )
    quota: QuotaConfig | None = Field(
        None, description="API budget; work beyond it waits for the next window"
    )
    activities: ActivitiesConfig | None = Field(
        None, description="the table rules' `activity` actions write to"
    )


class PushedObjectConfig(_Strict):
    """An object of a push-only system: its typed fields are declared here."""

    key: str = Field("id", description="name of the id field in pushed changes")
    fields: dict[str, FieldTypeName] = Field(
        min_length=1, description="field name: type (string, integer, decimal, ...)"
    )
    deleted: DeletedMarker | None = None
    anonymize: dict[str, Any] | None = Field(
        None,
        description="GDPR erasure: field: replacement value written by `crmsync erase`",
    )


class WebhookSystemConfig(_System):
    """A push-only system: its records are whatever it last pushed, kept by crmsync."""

    connector: Literal["webhook"] = Field(description="how crmsync reaches the system")
    webhook_secret: str = Field(
        description="Standard Webhooks secret (whsec_...) that signs its deliveries; use ${VAR}"
    )
    objects: dict[str, PushedObjectConfig] = Field(min_length=1)


class RefConfig(_Strict):
    """A reference another object can be reached through (``company.city``)."""

    field: str = Field(description="the Many2One field of the model (e.g. party)")
    object: str = Field(description="the object of this system it points to (e.g. company)")


class TrytonObjectConfig(_Strict):
    """One object of a Tryton server: a model, optionally narrowed to a kind of record."""

    model: str | None = Field(
        None,
        description="Tryton model (party.party, sale.opportunity, ...); company and person "
        "default to party.party, deal and lead to sale.opportunity, others to their name",
    )
    category: str | None = Field(
        None,
        description="party.category name telling this kind of party apart (company and "
        "person default to Company and Person); new records get it",
    )
    states: list[str] | None = Field(
        None,
        description="record states that belong to this object (deal defaults to every "
        "state but lead, lead to [lead])",
    )
    refs: dict[str, RefConfig] | None = Field(
        None,
        description="references mappings may follow (deal defaults to company: party and "
        "contact: the contact's party)",
    )
    deleted: DeletedMarker | None = None
    anonymize: dict[str, Any] | None = Field(
        None,
        description="GDPR erasure: field: replacement value written by `crmsync erase`",
    )
    lookback: float = Field(
        5.0,
        ge=0,
        description="seconds re-read before the cursor on every poll (Tryton stamps a "
        "change with its transaction's start, not its commit)",
    )


class TrytonSystemConfig(_System):
    """A Tryton server reached through its JSON-RPC API."""

    connector: Literal["tryton"] = Field(description="how crmsync reaches the system")
    url: str = Field(description="server URL, e.g. http://127.0.0.1:8000")
    database: str = Field(description="Tryton database name")
    user: str = Field("admin", description="login")
    password: str = Field(description="password; use ${VAR}")
    objects: dict[str, TrytonObjectConfig] = Field(min_length=1)
    webhook_secret: str | None = Field(
        None,
        description="Standard Webhooks secret (whsec_...) for POST /hooks/SYSTEM; use ${VAR}",
    )
    quota: QuotaConfig | None = Field(
        None, description="API budget; work beyond it waits for the next window"
    )
    timeout: float = Field(30.0, gt=0, description="seconds per RPC call")


AnySystem = Annotated[
    SystemConfig | WebhookSystemConfig | TrytonSystemConfig, Field(discriminator="connector")
]


class Op(StrEnum):
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    IS_EMPTY = "is_empty"
    IS_NOT_EMPTY = "is_not_empty"
    IS_TRUE = "is_true"
    IS_FALSE = "is_false"
    # event operators: only in a link's trigger.when and a rule's when (they compare
    # with the last state seen)
    CHANGED = "changed"
    CHANGED_TO = "changed_to"
    # rules only: the field had ``value`` last time and has another now
    CHANGED_FROM = "changed_from"
    # rules only: ``value`` is a condition on the field ({op, value}) that was false
    # last time and is true now ("score becomes >= 50")
    BECOMES = "becomes"


UNARY_OPS = {Op.IS_EMPTY, Op.IS_NOT_EMPTY, Op.IS_TRUE, Op.IS_FALSE, Op.CHANGED}
EVENT_OPS = frozenset({Op.CHANGED, Op.CHANGED_TO, Op.CHANGED_FROM, Op.BECOMES})
RULE_ONLY_OPS = frozenset({Op.CHANGED_FROM, Op.BECOMES})


class Condition(_Strict):
    field: str
    op: Op
    value: Any = None

    @field_validator("value")
    @classmethod
    def _list_for_in(cls, v: Any, info: ValidationInfo) -> Any:
        # Checked on the value (not the condition) so the error points at `value:`.
        op = info.data.get("op")
        if op in (Op.IN, Op.NOT_IN) and not isinstance(v, list):
            raise ValueError(f"op {op.value} expects a list of values, got {v!r}")
        return v

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        if self.op is Op.BECOMES:
            # The inner condition is checked like any other, on the same field.
            inner = self.value
            if not isinstance(inner, dict) or "op" not in inner or set(inner) - {"op", "value"}:
                raise ValueError(
                    "op becomes expects value: {op: OP, value: V} (a condition on the same "
                    f"field, e.g. {{op: ge, value: 50}}), got {inner!r}"
                )
            cond = Condition(field=self.field, op=inner["op"], value=inner.get("value"))
            if cond.op in EVENT_OPS:
                raise ValueError(f"op becomes takes a plain condition, not {cond.op.value}")
            self.value = cond
            return self
        if self.op in (Op.IN, Op.NOT_IN) and not isinstance(self.value, list):
            raise ValueError(f"op {self.op.value} expects a list of values")
        if self.op not in UNARY_OPS and self.op not in (Op.IN, Op.NOT_IN) and self.value is None:
            raise ValueError(f"op {self.op.value} expects a value")
        return self


class AllOf(_Strict):
    all: list[Criteria] = Field(min_length=1)


class AnyOf(_Strict):
    any: list[Criteria] = Field(min_length=1)


def _criteria_kind(v: Any) -> str | None:
    # Pick the branch by its key so a bad condition reports one error, not one per branch.
    if isinstance(v, dict):
        return "AllOf" if "all" in v else "AnyOf" if "any" in v else "Condition"
    if isinstance(v, BaseModel):
        return type(v).__name__
    return None


Criteria = Annotated[
    Annotated[AllOf, Tag("AllOf")]
    | Annotated[AnyOf, Tag("AnyOf")]
    | Annotated[Condition, Tag("Condition")],
    Discriminator(
        _criteria_kind,
        custom_error_type="criteria",
        custom_error_message="expected a condition (field, op, value) or an all:/any: list",
    ),
]
AllOf.model_rebuild()
AnyOf.model_rebuild()


class Direction(StrEnum):
    FORWARD = "forward"
    BACKWARD = "backward"
    BOTH = "both"


class Mapping(_Strict):
    source: str = Field(description="source field")
    target: str = Field(description="target field")
    direction: Direction | None = Field(None, description="overrides the link's direction")
    values: dict[str, Any] | None = Field(
        None, description="value map source -> target (pick lists); inverted for backward"
    )
    default: Any = Field(None, description="value written when the source value is empty")
    unmapped: Annotated[
        Annotated[Literal["reject", "keep"], Tag("mode")]
        | Annotated[UnmappedValue, Tag("UnmappedValue")],
        Discriminator(
            _unmapped_kind,
            custom_error_type="unmapped",
            custom_error_message="expected reject, keep or a mapping '{value: X}'",
        ),
    ] | None = Field(
        None,
        description="a value with no entry in values: reject (default: the field is rejected "
        "with the reason) | keep (written as it is) | {value: X} (X is written)",
    )
    options: OptionList | None = Field(
        None,
        description="keep a lookup table of the target system in step with the source "
        "field's options (a Tryton selection, a SQL ENUM), before records are written",
    )

    @field_validator("values", mode="before")
    @classmethod
    def _text_keys(cls, v: Any) -> Any:
        # YAML reads `1: Active` or `true: Yes` with non-text keys; values are matched by text.
        if isinstance(v, dict):
            return {str(k): val for k, val in v.items()}
        return v

    @model_validator(mode="after")
    def _unmapped_needs_values(self) -> Mapping:
        if self.unmapped is not None and not self.values:
            raise ValueError("unmapped: applies to a values: map; this mapping has none")
        return self


class UnmappedValue(_Strict):
    """``unmapped: {value: X}``: X is written for a value with no entry in ``values:``."""

    value: Any = Field(description="written instead of an unmapped value (null: empty)")


def _mode_or(model: type[BaseModel], tag: str) -> Callable[[Any], str | None]:
    """A discriminator for a key taking a mode name or a mapping (``model``): picks the
    branch by the value's shape, so a bad value reports one error, not one per branch."""

    def kind(v: Any) -> str | None:
        if isinstance(v, str):
            return "mode"
        if isinstance(v, dict | model):
            return tag
        return None

    return kind


def object_ref(v: str) -> str:
    """``SYSTEM.OBJECT``, or a ValueError saying so."""
    system, dot, obj = v.partition(".")
    if not dot or not re.match(NAME_RE, system) or not re.match(NAME_RE, obj):
        raise ValueError(f"expected SYSTEM.OBJECT, got {v!r}")
    return v


def schedule_text(v: str | None) -> str | None:
    """An interval or cron expression, or a ValueError saying what was expected."""
    if v is not None:
        from crmsync.schedule import parse_schedule

        parse_schedule(v)
    return v


_unmapped_kind = _mode_or(UnmappedValue, "UnmappedValue")


class OptionList(_Strict):
    """``options:`` of a mapping: every option of the source field (a Tryton selection,
    a SQL ENUM) is a record of a lookup table of the target system, created when
    missing (its label updated), never deleted: records may still use an old option."""

    object: str = Field(description="object of the target system: the lookup table")
    key: str = Field(description="its field holding the option (mapped through values:)")
    label: str | None = Field(None, description="its field for the option's label")


Mapping.model_rebuild()


class SetAction(_Strict):
    set: dict[str, Any] = Field(min_length=1, description="target fields to set on delete")


class ConflictPolicy(StrEnum):
    SOURCE = "source"
    TARGET = "target"
    NEWEST = "newest"


_on_delete_kind = _mode_or(SetAction, "SetAction")


class TriggerConfig(_Strict):
    """Sync a record once, when ``when`` becomes true for it (see engine/trigger.py)."""

    when: Criteria = Field(
        description="criteria; may use op changed and changed_to {field, op, value}"
    )

    @field_validator("when")
    @classmethod
    def _no_rule_ops(cls, v: Any) -> Any:
        if _ops_in(v, RULE_ONLY_OPS):
            raise ValueError("ops changed_from and becomes are only allowed in a rule's when")
        return v


def _ops_in(c: Any, ops: frozenset[Op]) -> bool:
    if isinstance(c, AllOf):
        return any(_ops_in(x, ops) for x in c.all)
    if isinstance(c, AnyOf):
        return any(_ops_in(x, ops) for x in c.any)
    return isinstance(c, Condition) and c.op in ops


def _event_ops_in(c: Any) -> bool:
    return _ops_in(c, EVENT_OPS)


class LinkConfig(_Strict):
    source: str = Field(description="SYSTEM.OBJECT the records come from")
    target: str = Field(description="SYSTEM.OBJECT the records go to")
    direction: Literal[Direction.FORWARD, Direction.BOTH] = Direction.FORWARD
    match: dict[str, str] = Field(
        default_factory=dict,
        description="source field: target field; pairs existing records and makes creates "
        "idempotent",
    )
    create: bool = True
    filter: Criteria | None = None
    fields: list[Mapping] = Field(min_length=1)
    conflict: ConflictPolicy = ConflictPolicy.SOURCE
    on_delete: Annotated[
        Annotated[Literal["ignore", "delete"], Tag("mode")]
        | Annotated[SetAction, Tag("SetAction")],
        Discriminator(
            _on_delete_kind,
            custom_error_type="on_delete",
            custom_error_message="expected ignore, delete or a mapping 'set: {field: value}'",
        ),
    ] = Field("ignore", description="what a delete at the source does to the target")
    batch_size: int = Field(500, ge=1, le=10_000)
    enabled: bool = True
    trigger: TriggerConfig | None = Field(
        None, description="sync a record only when it enters a state (status changed_to signed)"
    )
    schedule: str | None = Field(
        None,
        description="run every interval (1m to 24h, e.g. 15m or 2h) or on a "
        "cron expression ('0 * * * *'); without it the link runs only when triggered",
    )

    @field_validator("filter")
    @classmethod
    def _no_event_ops(cls, v: Any) -> Any:
        if v is not None and _event_ops_in(v):
            raise ValueError(
                "event ops (changed, changed_to, changed_from, becomes) are only allowed in "
                "trigger.when and in a rule's when"
            )
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        return schedule_text(v)

    @field_validator("source", "target")
    @classmethod
    def _ref(cls, v: str) -> str:
        return object_ref(v)

    @property
    def source_system(self) -> str:
        return self.source.partition(".")[0]

    @property
    def source_object(self) -> str:
        return self.source.partition(".")[2]

    @property
    def target_system(self) -> str:
        return self.target.partition(".")[0]

    @property
    def target_object(self) -> str:
        return self.target.partition(".")[2]

    def mapping_direction(self, m: Mapping) -> Direction:
        return m.direction or Direction(self.direction)

    @property
    def reads_target(self) -> bool:
        """True when target changes must be captured (some field flows backward)."""
        return any(self.mapping_direction(m) is not Direction.FORWARD for m in self.fields)


# -- rules: criteria workflows that act (engine in crmsync/rules/) -----------------


class SetSpec(_Strict):
    via: str | None = Field(None, description="link whose pairing leads to the record to set")
    values: dict[str, Any] = Field(min_length=1, description="field: value to write")


class SetStep(_Strict):
    set: SetSpec = Field(description="write fields on the record, or `via` a link its pair")


class ActivitySpec(_Strict):
    via: str | None = Field(None, description="link whose pairing leads to the record")
    subject: str = Field(description="template over the watched record's fields: {field}")
    body: str = Field("", description="template over the watched record's fields: {field}")


class ActivityStep(_Strict):
    activity: ActivitySpec = Field(description="log an activity on the record (or its pair)")


class SyncStep(_Strict):
    sync: str = Field(description="link to sync the record through now")


class WebhookSpec(_Strict):
    url: str = Field(description="where to POST; use ${VAR}")
    secret: str = Field(description="Standard Webhooks secret (whsec_...); use ${VAR}")
    timeout: float = Field(10.0, gt=0, le=120, description="seconds per delivery attempt")


class WebhookStep(_Strict):
    webhook: WebhookSpec = Field(description="POST the event, Standard Webhooks-signed")


def _step_kind(v: Any) -> str | None:
    # Pick the action by its one key so a typo reports one error, not one per kind.
    if isinstance(v, dict) and len(v) == 1:
        key = next(iter(v))
        return key if key in ("set", "activity", "sync", "webhook") else None
    if isinstance(v, BaseModel):
        return type(v).__name__.removesuffix("Step").lower()
    return None


RuleStep = Annotated[
    Annotated[SetStep, Tag("set")]
    | Annotated[ActivityStep, Tag("activity")]
    | Annotated[SyncStep, Tag("sync")]
    | Annotated[WebhookStep, Tag("webhook")],
    Discriminator(
        _step_kind,
        custom_error_type="rule_action",
        custom_error_message="expected one action: set, activity, sync or webhook",
    ),
]


class RuleConfig(_Strict):
    """When a watched record changes so that ``when`` holds, do ``then`` (in order)."""

    on: str = Field(description="SYSTEM.OBJECT the rule watches")
    schedule: str | None = Field(
        None,
        description="capture the object for the rule itself on this schedule; without it "
        "the rule sees the changes links capture for the object",
    )
    when: Criteria | None = Field(
        None,
        description="criteria (all/any, filter ops, and the event ops changed, changed_to, "
        "changed_from, becomes); without it every change fires",
    )
    then: list[RuleStep] = Field(min_length=1, description="actions, in order")
    enabled: bool = True

    @field_validator("on")
    @classmethod
    def _ref(cls, v: str) -> str:
        return object_ref(v)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        return schedule_text(v)

    @property
    def system(self) -> str:
        return self.on.partition(".")[0]

    @property
    def object(self) -> str:
        return self.on.partition(".")[2]


class Config(_Strict):
    """A crmsync.yaml file."""

    state: str = Field("sqlite:///crmsync.db", description="state database URL")
    systems: dict[str, AnySystem] = Field(min_length=1)
    links: dict[str, LinkConfig] = Field(min_length=1)
    rules: dict[str, RuleConfig] = Field(
        default_factory=dict, description="criteria workflows that act on captured changes"
    )

    @field_validator("systems", "links", "rules")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not re.match(NAME_RE, name):
                raise ValueError(f"name {name!r} must match {NAME_RE}")
        return v
