"""Resource names, ids and times of the ml_pipelines API. Pure."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from google.type import interval_pb2

from kernel.errors import InvalidArgument
from kernel.timestamps import timestamp

MODEL_ID = re.compile(r"^[a-z][a-z0-9_]{2,62}$")
JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Clock skew tolerated on "must not be in the future".
SKEW = timedelta(minutes=5)


def parse_model(name: str, field: str = "name") -> str:
    """The ``{model}`` of ``models/{model}``."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "models" or not MODEL_ID.match(parts[1]):
        raise InvalidArgument([(field, f"must be models/{{model}}, got {name!r}")])
    return parts[1]


def parse_version(name: str, field: str = "name") -> tuple[str, int]:
    """``({model}, {version})`` of ``models/{model}/versions/{version}``."""
    parts = name.split("/")
    ok = (
        len(parts) == 4
        and parts[0] == "models"
        and parts[2] == "versions"
        and MODEL_ID.match(parts[1]) is not None
        and parts[3].isdigit()
        and int(parts[3]) > 0
    )
    if not ok:
        raise InvalidArgument(
            [
                (
                    field,
                    "must be models/{model}/versions/{version} (a positive integer), "
                    f"got {name!r}",
                )
            ]
        )
    return parts[1], int(parts[3])


def model_name(model: str) -> str:
    return f"models/{model}"


def version_name(model: str, version: int) -> str:
    return f"models/{model}/versions/{version}"


def parse_job(name: str, collection: str, field: str = "name") -> str:
    """The id of ``{collection}/{id}`` (training runs, feature backfills)."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != collection or not JOB_ID.match(parts[1]):
        raise InvalidArgument([(field, f"must be {collection}/{{id}}, got {name!r}")])
    return parts[1]


def check_job_id(value: str, field: str) -> None:
    if value and not JOB_ID.match(value):
        raise InvalidArgument(
            [
                (
                    field,
                    "must be 1 to 63 lower case letters, digits and hyphens, starting alphanumeric",
                )
            ]
        )


def interval(start: datetime, end: datetime) -> interval_pb2.Interval:
    return interval_pb2.Interval(start_time=timestamp(start), end_time=timestamp(end))


def parse_window(
    window: interval_pb2.Interval,
    field: str,
    now: datetime,
    *,
    required: bool = True,
    default: timedelta | None = None,
) -> tuple[datetime, datetime]:
    """[start, end) of a data window: both set, start < end, end not in the future."""
    has_start, has_end = window.HasField("start_time"), window.HasField("end_time")
    if not has_start and not has_end and not required and default is not None:
        return now - default, now
    problems = []
    if not has_start:
        problems.append((f"{field}.start_time", "is required"))
    if not has_end:
        problems.append((f"{field}.end_time", "is required"))
    if problems:
        raise InvalidArgument(problems)
    start = window.start_time.ToDatetime(UTC)
    end = window.end_time.ToDatetime(UTC)
    if end <= start:
        raise InvalidArgument([(f"{field}.end_time", "must be after start_time")])
    if end > now + SKEW:
        raise InvalidArgument([(f"{field}.end_time", "must not be in the future")])
    return start, end
