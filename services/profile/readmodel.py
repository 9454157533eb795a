"""The in-memory read model behind ``GetUserContext`` / ``BatchGetUserContexts``.

Other services call these on their hot path, so they are answered from a
per-process dict, never from PostgreSQL:

- on start ``load`` reads every profile and granted purpose once;
- this process's own writes update it right after their commit
  (``put_profile``, ``set_purpose``, ``forget``), so a caller that just
  changed a preference sees it at once;
- with several replicas, each replica also follows the service's own
  ``ProfileChanged`` / ``ConsentChanged`` / ``UserDeleted`` events
  (``apply_*``, fed by ``services.profile.consumers``), so a write served by
  another replica lands within the bus's latency. Events are applied only
  when newer than the cached copy, so replays and reordering are harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from kernel.timestamps import timestamp, to_datetime
from services.profile import names
from tips.profile.v1 import consent_pb2, events_pb2, profile_pb2, user_context_pb2

GRANTED = consent_pb2.CONSENT_STATE_GRANTED
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass
class _Entry:
    profile: profile_pb2.Profile
    granted: set[int] = field(default_factory=set)
    update_time: datetime = _NEVER
    # When each purpose last changed, to ignore stale consent events.
    purpose_times: dict[int, datetime] = field(default_factory=dict)


class UserContexts:
    """User id -> profile and granted purposes."""

    def __init__(self) -> None:
        self._users: dict[str, _Entry] = {}
        # Users erased while this process ran: late events must not revive them.
        self._erased: set[str] = set()

    def __len__(self) -> int:
        return len(self._users)

    def load(self, profiles: list[profile_pb2.Profile], granted: dict[str, list[int]]) -> None:
        users: dict[str, _Entry] = {}
        for profile in profiles:
            user_id = profile.name.split("/")[1]
            entry = _Entry(profile, set(granted.get(user_id, ())))
            entry.update_time = to_datetime(profile.update_time)
            users[user_id] = entry
        self._users = users

    def add(self, user_id: str, profile: profile_pb2.Profile, granted: list[int]) -> None:
        """Remember a user read from the database (a miss), unless known or erased."""
        if user_id in self._users or user_id in self._erased:
            return
        entry = _Entry(profile, set(granted))
        entry.update_time = to_datetime(profile.update_time)
        self._users[user_id] = entry

    def get(self, user_id: str) -> user_context_pb2.UserContext | None:
        entry = self._users.get(user_id)
        if entry is None:
            return None
        ctx = user_context_pb2.UserContext(
            user=names.user_name(user_id),
            profile=entry.profile,
            granted_purposes=sorted(entry.granted),  # type: ignore[arg-type]
        )
        ctx.update_time.CopyFrom(timestamp(entry.update_time))
        return ctx

    # --- this process's writes ---------------------------------------------------------

    def put_profile(self, user_id: str, profile: profile_pb2.Profile) -> None:
        at = to_datetime(profile.update_time)
        entry = self._users.get(user_id)
        if entry is None:
            self._users[user_id] = _Entry(profile, update_time=at)
            return
        if at >= to_datetime(entry.profile.update_time):
            entry.profile = profile
            entry.update_time = max(entry.update_time, at)

    def set_purpose(self, user_id: str, purpose: int, state: int, at: datetime) -> None:
        entry = self._users.get(user_id)
        if entry is None:
            return  # no profile yet: the profile's creation brings the consents along
        if entry.purpose_times.get(purpose, _NEVER) > at:
            return
        entry.purpose_times[purpose] = at
        if state == GRANTED:
            entry.granted.add(purpose)
        else:
            entry.granted.discard(purpose)
        entry.update_time = max(entry.update_time, at)

    def forget(self, user_id: str) -> None:
        self._users.pop(user_id, None)
        self._erased.add(user_id)

    # --- events from other replicas ----------------------------------------------------

    def apply_profile_changed(self, event: events_pb2.ProfileChanged) -> None:
        user_id = event.user.split("/")[-1]
        if user_id in self._erased:
            return
        if user_id in self._users or event.created:
            # A new profile has no consents yet; an unknown older one is left to
            # the database read on the next miss (its consents are not in the event).
            self.put_profile(user_id, event.profile)

    def apply_consent_changed(self, event: events_pb2.ConsentChanged) -> None:
        user_id = event.user.split("/")[-1]
        self.set_purpose(user_id, event.purpose, event.state, to_datetime(event.occur_time))

    def apply_user_deleted(self, event: events_pb2.UserDeleted) -> None:
        self.forget(event.user.split("/")[-1])
