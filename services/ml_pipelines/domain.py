"""Resource names, ids and times of the ml_pipelines API. Pure."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from google.type import interval_pb2

from kernel.errors import InvalidArgument
from kernel.names import Pattern
from kernel.timestamps import datetime_of, timestamp

MODEL_ID = re.compile(r"^[a-z][a-z0-9_]{2,62}$")
JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Clock skew tolerated on "must not be in the future".
SKEW = timedelta(minutes=5)


MODEL = Pattern("models/{model}", ids={"model": MODEL_ID.pattern[1:-1]})
VERSION = Pattern(
    "models/{model}/versions/{version}",
    ids={"model": MODEL_ID.pattern[1:-1], "version": "[1-9][0-9]{0,8}"},
)
_JOB = JOB_ID.pattern[1:-1]
TRAINING_RUN = Pattern("trainingRuns/{id}", ids={"id": _JOB})
FEATURE_BACKFILL = Pattern("featureBackfills/{id}", ids={"id": _JOB})


def parse_model(name: str, field: str = "name") -> str:
    """The ``{model}`` of ``models/{model}``."""
    return MODEL.parse_one(name, field)


def parse_version(name: str, field: str = "name") -> tuple[str, int]:
    """``({model}, {version})`` of ``models/{model}/versions/{version}`` (a positive integer)."""
    model, version = VERSION.parse(name, field)
    return model, int(version)


def model_name(model: str) -> str:
    return MODEL.format(model)


def version_name(model: str, version: int) -> str:
    return VERSION.format(model, str(version))


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
    start = datetime_of(window, "start_time", f"{field}.start_time")
    end = datetime_of(window, "end_time", f"{field}.end_time")
    assert start is not None and end is not None  # both present: checked above
    if end <= start:
        raise InvalidArgument([(f"{field}.end_time", "must be after start_time")])
    if end > now + SKEW:
        raise InvalidArgument([(f"{field}.end_time", "must not be in the future")])
    return start, end
