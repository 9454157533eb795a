"""A simulated day as the signals a phone, a calendar connector and the app
would send: ``tips.events.v1.Signal`` messages, ready for ``IngestSignals``.
The recommender's context assembly folds them into the same context
``sim.users.context_at`` computes directly."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from kernel.timestamps import timestamp
from sim.reactions import DONE, SNOOZE
from sim.users import DAY_END_HOUR, Day, User, _steps_by
from tips.events.v1 import signal_pb2

K = signal_pb2.SignalKind
S = signal_pb2.SignalSource
_REACTIONS = {
    DONE: signal_pb2.TIP_REACTION_DONE,
    SNOOZE: signal_pb2.TIP_REACTION_SNOOZE,
}


def _at(day_start: datetime, hour: float) -> datetime:
    return day_start + timedelta(hours=hour)


def day_signals(
    user: User, day: Day, on: date, until_hour: float = DAY_END_HOUR
) -> list[signal_pb2.Signal]:
    """Signals of ``day`` (dated ``on``, UTC as local time) up to ``until_hour``."""
    start = datetime(on.year, on.month, on.day, tzinfo=UTC)
    sid = f"{user.user_id}-{on.isoformat()}"
    wake = _at(start, user.wake_hour)
    out = [
        signal_pb2.Signal(
            client_signal_id=f"{sid}-sleep",
            kind=K.SIGNAL_KIND_SLEEP,
            source=S.SIGNAL_SOURCE_PHONE,
            start_time=timestamp(wake - timedelta(minutes=day.sleep_minutes + 20)),
            end_time=timestamp(wake),
            sleep=signal_pb2.SleepPayload(asleep_minutes=int(day.sleep_minutes)),
        ),
        signal_pb2.Signal(
            client_signal_id=f"{sid}-mood",
            kind=K.SIGNAL_KIND_MOOD,
            source=S.SIGNAL_SOURCE_APP,
            start_time=timestamp(wake + timedelta(minutes=30)),
            mood=signal_pb2.MoodPayload(score=round(3 + 2 * day.mood)),
        ),
    ]
    for i, (begin, end) in enumerate(day.meetings):
        out.append(
            signal_pb2.Signal(
                client_signal_id=f"{sid}-meeting-{i}",
                kind=K.SIGNAL_KIND_CALENDAR_EVENT,
                source=S.SIGNAL_SOURCE_CONNECTOR,
                start_time=timestamp(_at(start, begin)),
                end_time=timestamp(_at(start, end)),
                calendar_event=signal_pb2.CalendarEventPayload(
                    event_id=f"{sid}-meeting-{i}", busy=True, attendee_count=3
                ),
            )
        )
    hour = float(int(user.wake_hour))
    while hour + 1 <= until_hour:
        count = (_steps_by(user, hour + 1) - _steps_by(user, hour)) * day.step_factor
        out.append(
            signal_pb2.Signal(
                client_signal_id=f"{sid}-steps-{int(hour):02d}",
                kind=K.SIGNAL_KIND_STEPS,
                source=S.SIGNAL_SOURCE_PHONE,
                start_time=timestamp(_at(start, hour)),
                end_time=timestamp(_at(start, hour + 1)),
                steps=signal_pb2.StepsPayload(count=int(count)),
            )
        )
        hour += 1
    return out


def reaction_signal(user: User, tip_name: str, reaction: str, at: datetime) -> signal_pb2.Signal:
    """The app's signal for a reaction (``tip_name``: ``users/{user}/tips/{tip}``)."""
    payload = signal_pb2.TipReactionPayload(
        tip=tip_name, reaction=_REACTIONS.get(reaction, signal_pb2.TIP_REACTION_DISMISS)
    )
    if reaction == SNOOZE:
        payload.snooze_until.CopyFrom(timestamp(at + timedelta(hours=2)))
    return signal_pb2.Signal(
        client_signal_id=f"{user.user_id}-reaction-{tip_name.rsplit('/', 1)[-1]}",
        kind=K.SIGNAL_KIND_TIP_REACTION,
        source=S.SIGNAL_SOURCE_APP,
        start_time=timestamp(at),
        tip_reaction=payload,
    )
