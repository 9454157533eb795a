"""The decision: candidates -> eligibility -> features -> scores -> policy -> logged tips.

Everything a decision reads is in memory (catalog, context, profile,
history, policy); the only wait is the group commit of the decision log
(``writer.py``). When nothing is eligible the answer is empty and the reason
is logged and counted (``no_tip_reasons``).

Metrics (``kernel.metrics``, recorded when read): each decision's duration
and candidate count, the tips decided by whether the policy explored, and
the scoring fallbacks (docs/operations.md, "Telemetry").
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta

import numpy as np
import orjson
from opentelemetry.metrics import CallbackOptions, Observation

from kernel import metrics
from kernel.ids import random_id
from kernel.names import user_name
from kernel.outbox import EventRows, OutboxRow
from kernel.timestamps import timestamp
from policy import bandit, features
from policy.catalog import Entry
from services.recommender import domain, eligibility, explain, wire
from services.recommender.catalog_store import CatalogKeeper
from services.recommender.consumers import ContextKeeper
from services.recommender.core.learning import Learner
from services.recommender.history import HistoryKeeper
from services.recommender.profiles import ProfileCache
from services.recommender.settings import RecommenderSettings
from services.recommender.store import tip_name
from services.recommender.writer import DecisionWriter
from tips.recommender.v1 import events_pb2, tip_pb2

log = logging.getLogger(__name__)

FEATURE_SCHEMA_VERSION = features.SCHEMA_VERSION
# A decision stays relevant this long unless its free block ends sooner.
DEFAULT_TTL = timedelta(hours=2)

_meter = metrics.meter("tips.recommender")
_DECISION_SECONDS = _meter.create_histogram(
    "tips.recommender.decision.duration",
    unit="s",
    description="A decision from the request to its committed log, by outcome "
    "(tip, no_tip: nothing eligible, error)",
    explicit_bucket_boundaries_advisory=metrics.SECONDS_BUCKETS,
)
_CANDIDATES = _meter.create_histogram(
    "tips.recommender.decision.candidates",
    unit="{tip}",
    description="Eligible catalog tips a decision chose among (0: no tip)",
    explicit_bucket_boundaries_advisory=(0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500),
)
_TIPS = _meter.create_counter(
    "tips.recommender.decision.tips",
    unit="{tip}",
    description="Tips decided, by whether the policy explored (picked other than its best "
    "guess): the exploration rate is explored=true over all",
)


def _json(value: object) -> str:
    """JSON for the logged row's jsonb columns. orjson writes NaN and infinities as
    null (jsonb has neither) and costs an eighth of json.dumps: 5 against 35 us for
    30 candidates, 4% of a decision's CPU (py-spy, bench/decision.py)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


_OUTCOMES = {k: {"tips.outcome": k} for k in ("tip", "no_tip", "error")}
_EXPLORED = {k: {"tips.explored": k} for k in (True, False)}
# Every engine of the process, for the fallback counter's callback.
_ENGINES: weakref.WeakSet[DecisionEngine] = weakref.WeakSet()


def _observe_fallbacks(options: CallbackOptions) -> Iterable[Observation]:
    onnx = live = 0
    for engine in list(_ENGINES):
        fallback = engine.learner.fallback
        onnx += fallback.fallbacks if fallback is not None else 0
        live += engine.scoring_failures
    return [
        Observation(onnx, {"tips.scorer.fallback": "onnxruntime"}),
        Observation(live, {"tips.scorer.fallback": "live_statistics"}),
    ]


_meter.create_observable_counter(
    "tips.recommender.scorer.fallbacks",
    callbacks=[_observe_fallbacks],
    unit="{decision}",
    description="Decisions not scored by the preferred scorer: by ONNX Runtime in process "
    "because Triton failed (onnxruntime), or from the live statistics alone because no "
    "scorer answered (live_statistics)",
)


def policy_context(f: domain.Features, affinity: dict[str, float]) -> dict[str, float]:
    """The raw context keys ``policy.features`` reads; unknown ones are left out."""
    out: dict[str, float] = {
        "local_hour": f.local.hour + f.local.minute / 60,
        "weekday": float(f.local.weekday()),
        "in_meeting": 1.0 if f.in_meeting else 0.0,
        **affinity,
    }
    if f.next_event_start is not None:
        out["minutes_to_next_meeting"] = (f.next_event_start - f.now).total_seconds() / 60
    if f.free_minutes is not None:
        out["free_block_minutes"] = float(f.free_minutes)
    if f.steps_today is not None:
        out["steps_today"] = float(f.steps_today)
    if f.steps_usual is not None:
        # The usual by now: waking hours 7..22 spread the day's steps.
        share = min(max((out["local_hour"] - 7.0) / 15.0, 0.05), 1.0)
        out["steps_usual_by_now"] = f.steps_usual * share
    if f.sleep_minutes is not None:
        out["sleep_last_night_minutes"] = float(f.sleep_minutes)
    if f.mood_score is not None:
        out["mood"] = (f.mood_score - 3) / 2
    return out


class DecisionEngine:
    """Decides tips for a user; one per process."""

    def __init__(
        self,
        settings: RecommenderSettings,
        catalog: CatalogKeeper,
        contexts: ContextKeeper,
        profiles: ProfileCache,
        history: HistoryKeeper,
        learner: Learner,
        writer: DecisionWriter,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.contexts = contexts
        self.profiles = profiles
        self.history = history
        self.learner = learner
        self.writer = writer
        self.no_tip_reasons: Counter[str] = Counter()
        self.decisions = 0
        # Decisions scored from the live statistics because the scorer failed,
        # and whether the last scoring did (GetPolicyStatus, metrics).
        self.scoring_failures = 0
        self.last_scoring_failed = False
        _ENGINES.add(self)
        # User id -> the decision being made for ``current``: callers at the same
        # moment share it instead of deciding twice.
        self._deciding: dict[str, asyncio.Future[list[tip_pb2.Tip]]] = {}
        # The catalog's context-free features, rebuilt when the catalog tuple changes.
        self._block_of: tuple[Entry, ...] | None = None
        self._block = features.tip_block(())
        self._checks = eligibility.StaticChecks(())

    def _tip_block(self, entries: tuple[Entry, ...]) -> features.TipBlock:
        if entries is not self._block_of:
            self._block = features.tip_block(
                [features.TipFeatures(e.name, e.category, e.effort, e.minutes_needed, e.day_parts)
                 for e in entries]
            )  # fmt: skip
            self._checks = eligibility.StaticChecks(entries)
            self._block_of = entries
        return self._block

    async def situation(
        self, user_id: str, now: datetime
    ) -> tuple[domain.UserContext, eligibility.Prefs, domain.Features]:
        ctx = self.contexts.get(user_id)
        prefs = await self.profiles.get(user_id)
        return ctx, prefs, domain.features(ctx, now, prefs.tz)

    async def current(self, user_id: str, count: int, now: datetime) -> list[tip_pb2.Tip]:
        """The user's active tips (at most ``count``); a decision only when none is active.

        Seeing a tip again is neither a decision nor a reaction: a screen that
        refreshes shows the same tips and teaches the policy nothing.
        """
        active = self.history.active(user_id, now)
        if active:
            return active[:count]
        pending = self._deciding.get(user_id)
        if pending is not None:
            try:
                return (await asyncio.shield(pending))[:count]
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this call itself was cancelled
                # The call deciding was cancelled: this one decides.
        pending = asyncio.get_running_loop().create_future()
        self._deciding[user_id] = pending
        try:
            # Another replica's decision may not have reached this one's memory yet.
            decided = await self.history.load_active(self.writer.db, user_id, now)
            if not decided:
                decided = await self.decide(user_id, count, now)
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except Exception as exc:
            pending.set_exception(exc)
            pending.exception()  # seen by the callers waiting on it, if any; no warning
            raise
        finally:
            if self._deciding.get(user_id) is pending:
                del self._deciding[user_id]
        pending.set_result(decided)
        return decided[:count]

    async def decide(self, user_id: str, count: int, now: datetime) -> list[tip_pb2.Tip]:
        """A new decision of ``count`` tips, committed, then active."""
        if not metrics.enabled():
            return await self._decide(user_id, count, now)
        start = time.perf_counter()
        outcome = "error"
        try:
            tips = await self._decide(user_id, count, now)
            outcome = "tip" if tips else "no_tip"
            return tips
        finally:
            _DECISION_SECONDS.record(time.perf_counter() - start, _OUTCOMES[outcome])

    async def _decide(self, user_id: str, count: int, now: datetime) -> list[tip_pb2.Tip]:
        ctx, prefs, f = await self.situation(user_id, now)
        history = self.history.get(user_id)
        catalog = self.catalog.entries  # one tuple for the whole decision
        block = self._tip_block(catalog)
        index, reasons = eligibility.eligible_index(
            catalog, f, prefs, history, ctx.suppressed_until,
            self.settings.recommender_default_daily_cap, self._checks,
        )  # fmt: skip
        _CANDIDATES.record(len(index))
        if not index:
            top = reasons.most_common(1)[0][0] if reasons else "empty_catalog"
            self.no_tip_reasons[top] += 1
            log.info("no eligible tip", extra={"user": user_id, "reasons": dict(reasons)})
            return []
        context = policy_context(f, self.history.affinity(user_id))
        rows = features.rows(context, block, index)
        base = await self.learner.base_scores(rows)
        # None from a scorer: it failed, and the policy decides from live statistics.
        self.last_scoring_failed = base is None and self.learner.scorer is not None
        self.scoring_failures += self.last_scoring_failed
        model_version = self.learner.model_version if base is not None else ""
        policy = self.learner.policy
        arms = [catalog[i].id for i in index]
        picks: list[tuple[Entry, int, bandit.Decision]] = []
        remaining = list(range(len(index)))
        for _ in range(min(count, len(index))):
            decision = policy.choose_rows(
                [arms[j] for j in remaining],
                rows[remaining],
                self.learner.rng,
                base_scores=None if base is None else base[remaining],
            )
            at = remaining[[arms[j] for j in remaining].index(decision.arm)]
            picks.append((catalog[index[at]], at, decision))
            remaining.remove(at)
            _TIPS.add(1, _EXPLORED[bool(decision.explored)])
        values = f.values()
        feature_bytes = wire.context_features(values.items())
        json_context = _json(values)  # unknown values (NaN) as null
        out: list[tip_pb2.Tip] = []
        db_rows: list[dict[str, object]] = []
        events: list[OutboxRow] = []
        # Made in the request: the headers carry its trace context.
        event_rows = EventRows(events_pb2.TipDecided)
        for rank, (entry, at, decision) in enumerate(picks):
            expire = self._expiry(entry, f, now)
            tip = self._render(user_id, entry, f, now, expire, model_version)
            db_rows.append(self._row(user_id, tip, rank, decision, rows[at],
                                     json_context, policy.version, now, expire))  # fmt: skip
            events.append(self._event(event_rows, user_id, tip, rank, decision, feature_bytes))
            out.append(tip)
        await self.writer.write(db_rows, events)
        for tip in out:
            self.history.record_decision(user_id, tip.catalog_tip.removeprefix("catalogTips/"), now)
        self.history.record_active(user_id, out)
        self.decisions += len(out)
        return out

    @staticmethod
    def _expiry(e: Entry, f: domain.Features, now: datetime) -> datetime:
        """When the tip stops being relevant: its TTL, or the end of its free block."""
        expire = now + DEFAULT_TTL
        if e.min_free_block_minutes and f.next_event_start is not None:
            expire = min(expire, f.next_event_start)
        return expire

    def _render(
        self,
        user_id: str,
        e: Entry,
        f: domain.Features,
        now: datetime,
        expire: datetime,
        model_version: str,
    ) -> tip_pb2.Tip:
        title, body, why = explain.explain(f, e)
        return tip_pb2.Tip(
            name=tip_name(user_id, random_id()),
            catalog_tip=e.name,
            title=title,
            body=body,
            category=e.category,
            explanation=why,
            effort=e.effort,  # type: ignore[arg-type]
            minutes_needed=e.minutes_needed,
            state=tip_pb2.TIP_STATE_ACTIVE,
            decide_time=timestamp(now),
            expire_time=timestamp(expire),
            model_version=model_version,
        )

    def _event(
        self,
        event_rows: EventRows,
        user_id: str,
        tip: tip_pb2.Tip,
        rank: int,
        decision: bandit.Decision,
        feature_bytes: bytes,
    ) -> OutboxRow:
        """The TipDecided outbox row; its repeated fields are encoded by ``wire``."""
        head = events_pb2.TipDecided(
            event_id=tip.name,
            occur_time=tip.decide_time,
            user=user_name(user_id),
            tip=tip.name,
            catalog_tip=tip.catalog_tip,
            propensity=decision.propensity,
            feature_schema_version=FEATURE_SCHEMA_VERSION,
            model_version=tip.model_version,
            policy_name=bandit.ALGORITHM,
            exploration=bool(decision.explored),
            rank=rank,
            catalog_version=self.catalog.version,
            expire_time=tip.expire_time,
        )
        scores = decision.scores
        candidates = wire.candidates(
            (arm, scores[arm], p) for arm, p in decision.probabilities.items()
        )
        return event_rows.row(tip.name, wire.tip_decided(head, candidates, feature_bytes))

    def _row(
        self,
        user_id: str,
        tip: tip_pb2.Tip,
        rank: int,
        decision: bandit.Decision,
        x: np.ndarray,
        context: str,
        policy_version: str,
        decide_time: datetime,
        expire_time: datetime,
    ) -> dict[str, object]:
        return {
            "user_id": user_id,
            "tip_id": tip.name.rsplit("/", 1)[-1],
            "catalog_tip": tip.catalog_tip,
            "title": tip.title,
            "body": tip.body,
            "category": tip.category,
            "explanation": tip.explanation,
            "effort": int(tip.effort),
            "minutes_needed": tip.minutes_needed,
            "state": int(tip.state),
            "reaction": 0,
            "decide_time": decide_time,
            "expire_time": expire_time,
            "model_version": tip.model_version,
            "catalog_version": self.catalog.version,
            "policy_version": policy_version,
            "propensity": float(decision.propensity),
            "explored": bool(decision.explored),
            "rank": rank,
            "row": np.asarray(x, dtype=np.float64).tobytes(),
            "context": context,
            "candidates": _json(
                {arm: [decision.scores[arm], p] for arm, p in decision.probabilities.items()}
            ),
        }
