"""Unimeter's Python SDK and routing core.

``Client`` routes each account to its partition's node, fans batches out in parallel, retries
inside the caller's deadline and resumes alert subscriptions exactly. Everything a user needs is
re-exported here; submodules are internal.
"""

from .client import Client
from .errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimeterError,
)
from .periods import (
    current_billing_period,
    current_month,
    current_period,
    last_billing_period,
    last_month,
    this_week,
    today,
)
from .retry import RetryPolicy
from .scaling import scale, unscale
from .subscription import AlertSubscription
from .types import (
    AggType,
    AggValue,
    Alert,
    AlertThreshold,
    DeliveryMode,
    DimensionFilter,
    Event,
    GroupValue,
    IngestResult,
    Metric,
    OperationType,
    Period,
    PeriodSelector,
    PeriodType,
    QueryResult,
    StoredEvent,
)

__all__ = [
    "AggType",
    "AggValue",
    "Alert",
    "AlertSubscription",
    "AlertThreshold",
    "AlreadyExistsError",
    "Client",
    "DeadlineExceededError",
    "DeliveryMode",
    "DimensionFilter",
    "Event",
    "FieldViolation",
    "GroupValue",
    "IngestResult",
    "InternalError",
    "InvalidArgumentError",
    "Metric",
    "NotFoundError",
    "OperationType",
    "OutOfRangeError",
    "Period",
    "PeriodSelector",
    "PeriodType",
    "PermissionDeniedError",
    "QueryResult",
    "ResourceExhaustedError",
    "RetryPolicy",
    "StoredEvent",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimeterError",
    "current_billing_period",
    "current_month",
    "current_period",
    "last_billing_period",
    "last_month",
    "scale",
    "this_week",
    "today",
    "unscale",
]
