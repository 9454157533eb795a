"""The learning loop: rewards -> online policy updates, snapshots, model exports.

- Rewards: a reaction (``consumer.py``) or the reward wait running out
  (``sweep``) gives a decision its reward in a transaction that also enqueues
  ``RewardAssigned``; after the commit the policy folds it in (``apply``), so
  the next decision reflects it within milliseconds. ``lock`` orders those
  transactions, so the reward sequence is the order of updates.
- Durability: the rewards are the record. A snapshot of the statistics with
  what it folded in (every reward up to a sequence, and those above it) is
  saved every ``policy_snapshot_seconds`` and at shutdown; a restart loads it
  and folds in exactly the rewards it lacks.
- Replicas: each folds its own rewards at once and every other replica's as
  their ``RewardAssigned`` arrives (``follow``, an ephemeral consumer of its
  own); each reward once, by its ``reward_seq``, whatever the order.
  ``reconcile`` checks the table now and then for rewards the feed missed.
- The model: the ONNX model (the policy's shared part) is exported again
  after every ``recommender_model_refresh_updates`` rewards (``policy.serving``:
  the rule the learning and replay benches run), on demand, or on a schedule,
  and swapped into the scorer without failing a request.
- Promotion: when ml_pipelines promotes a version (``ModelVersionPromoted``,
  followed by every replica), the policy becomes that version (its ONNX model
  and its ``policy.npz``) plus every reward assigned since the promotion, and
  online learning goes on from there (docs/decisions.md, 34).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.bus import Bus, Delivery, stream_of, subject_of
from kernel.consumers import event_user
from kernel.db import Database
from kernel.names import user_name
from kernel.outbox import enqueue
from kernel.timestamps import timestamp, to_datetime
from policy import bandit, features, onnx_export, scoring, serving
from services.recommender import reward_store
from services.recommender.history import HistoryKeeper
from services.recommender.reward_store import Rewarded
from services.recommender.settings import RecommenderSettings
from tips.events.v1 import signal_pb2
from tips.ml_pipelines.v1 import events_pb2 as ml_events
from tips.recommender.v1 import events_pb2

log = logging.getLogger(__name__)

POLICY_NAME = "tip_policy"
R = signal_pb2.TipReaction
SOURCE_REACTION = events_pb2.REWARD_SOURCE_REACTION
SOURCE_TIMEOUT = events_pb2.REWARD_SOURCE_TIMEOUT


class Learner:
    """The policy, its scorer and the reward bookkeeping of one process."""

    def __init__(
        self,
        settings: RecommenderSettings,
        db: Database,
        outbox: Table,
        history: HistoryKeeper,
    ) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.history = history
        self.policy = bandit.Policy()
        self.repository = Path(settings.recommender_model_repository)
        self.model_name = settings.recommender_model_name
        self.onnx: scoring.OnnxScorer | None = None
        self.triton: scoring.TritonScorer | None = None
        self.scorer: scoring.Scorer | None = None
        self.rng = np.random.default_rng(settings.recommender_seed)
        self.lock = asyncio.Lock()
        self._export_lock = asyncio.Lock()
        # Every committed reward up to applied_seq is folded in, and those in _above.
        self.applied_seq = 0
        self._above: set[int] = set()
        self.folded = 0  # rewards folded in by this process
        self._saved_folded = 0
        self.online_updates = 0  # since the deciding model was loaded
        self.model_load_time = datetime.now(UTC)
        self.exports = 0
        # The registry's last promotion this policy went on from (ModelVersionPromoted).
        self.promoted_version = ""
        self.promote_time: datetime | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._lease_holder = f"{socket.gethostname()}-{os.getpid()}"  # this replica
        self._leased = ""  # the version it holds a lease on
        self._started = datetime.now(UTC)

    # --- start ----------------------------------------------------------------------

    async def start(self) -> None:
        """Statistics from the snapshot plus the rewards after it; the model loaded."""
        async with self.db.session() as session:
            snapshot = await reward_store.load_snapshot(session, POLICY_NAME)
        serving: str | None = None
        if snapshot is not None:
            self.policy = bandit.Policy.from_state(snapshot.state)
            self.applied_seq, self._above = snapshot.seq, set(snapshot.above)
            self.promoted_version, self.promote_time = snapshot.promoted, snapshot.promote_time
            serving = snapshot.serving or None
        async with self.lock:
            replayed = await self.reconcile_once()
        self._saved_folded = self.folded
        self.online_updates = 0
        present = onnx_export.versions(self.repository, self.model_name)
        if serving is not None and int(serving) not in present:
            serving = None  # not in this repository (any more): the newest serves
        if not present:
            await asyncio.to_thread(self._export_copy)
        self.onnx = await asyncio.to_thread(
            scoring.OnnxScorer, self.repository, self.model_name, serving
        )
        self.scorer = self.onnx
        self._renew_lease()
        if self.settings.recommender_triton_url:
            # Triton is asked for the version in-process scoring has: both score alike.
            self.triton = scoring.TritonScorer(
                self.settings.recommender_triton_url, self.model_name, self.onnx.model_version
            )
            self.scorer = scoring.FallbackScorer(self.triton, self.onnx)
        log.info(
            "policy ready",
            extra={"replayed": replayed, "model_version": self.model_version},
        )

    # --- scoring ----------------------------------------------------------------------

    @property
    def model_version(self) -> str:
        """``models/{model}/versions/{version}`` of the model scoring now."""
        if self.scorer is None:
            return ""
        return f"models/{self.model_name}/versions/{self.scorer.model_version}"

    @property
    def fallback(self) -> scoring.FallbackScorer | None:
        return self.scorer if isinstance(self.scorer, scoring.FallbackScorer) else None

    async def base_scores(self, rows: np.ndarray) -> np.ndarray | None:
        """The model's shared part; None (live statistics) when no scorer can answer."""
        if self.scorer is None:
            return None
        try:
            return await self.scorer.score(rows)
        except Exception as exc:
            log.warning("scoring failed, deciding from live statistics", extra={"error": repr(exc)})
            return None

    # --- rewards ----------------------------------------------------------------------

    def reaction_reward(self, reaction: int) -> float:
        s = self.settings
        rewards: dict[int, float] = {
            R.TIP_REACTION_DONE: s.recommender_reward_done,
            R.TIP_REACTION_SNOOZE: s.recommender_reward_snooze,
            R.TIP_REACTION_DISMISS: s.recommender_reward_dismiss,
        }
        return rewards[reaction]

    async def enqueue_reward(
        self,
        session: AsyncSession,
        rewarded: Rewarded,
        source: int,
        reaction: int,
        react_time: datetime | None,
    ) -> None:
        """``RewardAssigned`` into the outbox, in the reward's transaction."""
        tip = f"users/{rewarded.user_id}/tips/{rewarded.tip_id}"
        event = events_pb2.RewardAssigned(
            event_id=f"{tip}:reward",
            occur_time=timestamp(rewarded.reward_time),
            user=user_name(rewarded.user_id),
            tip=tip,
            catalog_tip=rewarded.catalog_tip,
            reward=rewarded.reward,
            source=source,  # type: ignore[arg-type]
            reaction=reaction,  # type: ignore[arg-type]
            decide_time=timestamp(rewarded.decide_time),
            model_version=rewarded.model_version,
            propensity=rewarded.propensity,
            reward_seq=rewarded.seq,
        )
        if react_time is not None:
            event.react_time.CopyFrom(timestamp(react_time))
        await enqueue(session, self.outbox, event, msg_id=event.event_id)

    def folded_in(self, seq: int) -> bool:
        return seq <= self.applied_seq or seq in self._above

    def apply(self, rewards: Iterable[Rewarded]) -> int:
        """Fold committed rewards into the policy, each once (call with ``lock`` held)."""
        count = 0
        for r in rewards:
            if self.folded_in(r.seq):
                continue
            self._above.add(r.seq)
            self.folded += 1
            self.history.record_reward(r.user_id, r.category, r.reward)
            if self._learn(self.policy, r):
                self.online_updates += 1
                count += 1
        while self.applied_seq + 1 in self._above:  # in order, as one replica folds
            self.applied_seq += 1
            self._above.discard(self.applied_seq)
        self._refresh_if_due()
        return count

    @staticmethod
    def _learn(policy: bandit.Policy, r: Rewarded) -> bool:
        """One reward into ``policy``; False when it has no row to learn from."""
        if r.row is None:
            return False  # a decision of the rule policy: no feature row to learn from
        x = np.frombuffer(r.row, dtype=np.float64)
        if x.shape != (policy.dim,):
            return False  # logged under another feature schema
        policy.update(r.catalog_tip.removeprefix("catalogTips/"), x, r.reward)
        return True

    # --- replicas ---------------------------------------------------------------------

    async def reconcile_once(self) -> int:
        """Fold in committed rewards not folded yet (call with ``lock`` held); how many.

        Then skip the sequence's gaps (numbers taken by transactions that rolled
        back) below rewards older than ``recommender_reward_settle_seconds``.
        """
        async with self.db.session() as session:
            committed = await reward_store.reward_seqs_after(session, self.applied_seq)
            missing = [seq for seq, _ in committed if seq not in self._above]
            rewards = await reward_store.rewards_with_seqs(session, missing)
        folded_before = self.folded
        self.apply(rewards)
        settled = datetime.now(UTC) - timedelta(
            seconds=self.settings.recommender_reward_settle_seconds
        )
        floor = max((seq for seq, at in committed if at < settled), default=0)
        if floor > self.applied_seq:
            self.applied_seq = floor
            self._above = {seq for seq in self._above if seq > floor}
        return self.folded - folded_before

    async def reconcile(self) -> None:
        """Now and then, fold in any reward the ``RewardAssigned`` feed missed."""
        while True:
            await asyncio.sleep(self.settings.recommender_reward_reconcile_seconds)
            try:
                async with self.lock:
                    found = await self.reconcile_once()
            except Exception as exc:
                log.warning("reward reconcile failed", extra={"error": repr(exc)})
                continue
            if found:
                log.info("rewards caught up from the table", extra={"rewards": found})

    async def follow(self, bus: Bus) -> None:
        """Fold in other replicas' rewards as their ``RewardAssigned`` arrive."""
        margin = timedelta(seconds=self.settings.recommender_reward_settle_seconds)
        await bus.follow(
            stream=stream_of(events_pb2.RewardAssigned),
            subjects=[subject_of(events_pb2.RewardAssigned)],
            message_type=events_pb2.RewardAssigned,
            handler=self._on_reward,
            start_time=self._started - margin,
        )

    async def _on_reward(self, delivery: Delivery[events_pb2.RewardAssigned]) -> None:
        event = delivery.message
        user_id = event_user(delivery)
        if user_id is not None and event.source == SOURCE_REACTION:
            # A reaction another replica landed: that tip leaves the active ones here too.
            self.history.close(user_id, event.tip)
            if event.reaction == R.TIP_REACTION_DONE:
                catalog_id = event.catalog_tip.removeprefix("catalogTips/")
                self.history.record_done(user_id, catalog_id, to_datetime(event.react_time))
        seq = event.reward_seq
        if seq <= 0 or self.folded_in(seq):
            return  # ours (folded at commit), seen before, or from before reward_seq
        async with self.db.session() as session:
            rewards = await reward_store.rewards_with_seqs(session, [seq])
        async with self.lock:
            self.apply(rewards)

    def _refresh_if_due(self) -> None:
        """Export the model in the background once enough rewards came in (the serving rule)."""
        refresh = self.settings.recommender_model_refresh_updates
        if self.scorer is None or not serving.refresh_due(self.online_updates, refresh):
            return
        if self._refreshing is None or self._refreshing.done():
            loop = asyncio.get_running_loop()
            self._refreshing = loop.create_task(self._export_logged("count"))

    async def _export_logged(self, trigger: str) -> None:
        """``export``, logged (a background export has no caller to tell)."""
        started = time.monotonic()
        try:
            version, _, updates = await self.export()
        except Exception as exc:
            failure = {"trigger": trigger, "error": repr(exc)}
            log.warning("policy model export failed", extra=failure)
            return
        log.info(
            "policy model exported",
            extra={"trigger": trigger, "model_version": version, "updates": updates,
                   "seconds": round(time.monotonic() - started, 3)},
        )  # fmt: skip

    async def sweep_once(self, limit: int = 500) -> int:
        """Default reward for decisions past the wait; returns how many got one."""
        s = self.settings
        now = datetime.now(UTC)
        before = now - timedelta(seconds=s.recommender_reward_wait_seconds)
        async with self.lock:
            async with self.db.transaction() as session:
                rewarded = await reward_store.expire_waiting(
                    session, before, s.recommender_default_reward, SOURCE_TIMEOUT, now, limit
                )
                for r in rewarded:
                    await self.enqueue_reward(session, r, SOURCE_TIMEOUT, 0, None)
            self.apply(rewarded)
        return len(rewarded)

    async def sweep(self) -> None:
        interval = self.settings.recommender_reward_sweep_seconds
        while True:
            try:
                while await self.sweep_once() >= 500:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reward sweep failed", extra={"error": repr(exc)})
            await asyncio.sleep(interval)

    # --- snapshots ----------------------------------------------------------------------

    async def snapshot(self, force: bool = False) -> bool:
        """Save the statistics if they changed since the last snapshot (or ``force``)."""
        async with self.lock:
            if self.folded == self._saved_folded and not force:
                return False
            folded = self.folded
            snapshot = reward_store.Snapshot(
                self.policy.state(),
                self.applied_seq,
                frozenset(self._above),
                serving=self.onnx.model_version if self.onnx is not None else "",
                promoted=self.promoted_version,
                promote_time=self.promote_time,
            )
        async with self.db.transaction() as session:
            await reward_store.save_snapshot(session, POLICY_NAME, snapshot)
        self._saved_folded = folded
        return True

    async def snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.settings.recommender_policy_snapshot_seconds)
            self._renew_lease()
            try:
                await self.snapshot()
            except Exception as exc:
                log.warning("policy snapshot failed", extra={"error": repr(exc)})

    def _renew_lease(self) -> None:
        """The version serving here stays in a shared repository (every replica's
        exports prune it); the one served before is released."""
        if self.onnx is None:
            return
        serving = self.onnx.model_version
        root = self.repository / self.model_name
        if self._leased not in ("", serving):
            onnx_export.release(root / self._leased, self._lease_holder)
        onnx_export.lease(root / serving, self._lease_holder)
        self._leased = serving

    # --- export -------------------------------------------------------------------------

    def _export_copy(self, state: bytes | None = None) -> str:
        policy = bandit.Policy.from_state(state) if state is not None else self.policy
        # The version serving here holds a lease (_renew_lease): pruning leaves it.
        return onnx_export.export(policy, self.repository, self.model_name)

    async def _serve(self, version: str) -> None:
        """Score with ``version`` from now on, in process and on Triton alike."""
        await self._triton_loaded(version)
        await self._swap_model(version)

    async def _triton_loaded(self, version: str) -> None:
        """Triton polls its repository: wait (bounded) until it has ``version``; after
        that it is asked anyway and a miss falls back to ONNX Runtime in process."""
        if self.triton is None:
            return
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.recommender_triton_load_wait_seconds
        while loop.time() < give_up:  # Triton tells no one: ask it
            if await self.triton.ready(version):
                return
            await asyncio.sleep(0.5)

    async def _swap_model(self, version: str) -> None:
        """Both scorers on ``version``."""
        if self.onnx is not None:
            await self.onnx.reload(version)
        if self.triton is not None:
            self.triton.version = version
        self._renew_lease()

    async def export(self) -> tuple[str, str, int]:
        """Write a new model version from the live statistics and score with it.

        Returns (new model version, the one it replaces, online updates folded
        in since that one). The copy is taken under the lock (updates mutate
        the arrays in place); writing and loading run in threads.
        """
        # One export at a time: concurrent ones picked the same next version
        # number and collided on its directory (seen under load).
        async with self._export_lock:
            async with self.lock:
                state = self.policy.state()
                updates = self.online_updates
            base = self.model_version
            version = await asyncio.to_thread(self._export_copy, state)
            await self._serve(version)
            self.online_updates -= updates
            self.model_load_time = datetime.now(UTC)
            self.exports += 1
        return f"models/{self.model_name}/versions/{version}", base, updates

    async def export_schedule(self) -> None:
        interval = self.settings.recommender_export_interval_seconds
        while interval > 0:
            await asyncio.sleep(interval)
            await self._export_logged("schedule")

    # --- promotion ------------------------------------------------------------------

    async def follow_promotions(self, bus: Bus) -> None:
        """Serve each version ml_pipelines promotes; every replica reads every promotion.

        Read from the stream's start: promotions are few, and the last one
        applied (kept in the snapshot) tells which are new to this policy.
        """
        await bus.follow(
            stream=stream_of(ml_events.ModelVersionPromoted),
            subjects=[subject_of(ml_events.ModelVersionPromoted)],
            message_type=ml_events.ModelVersionPromoted,
            handler=self._on_promoted,
            start_time=datetime(2000, 1, 1, tzinfo=UTC),
        )

    async def _on_promoted(self, delivery: Delivery[ml_events.ModelVersionPromoted]) -> None:
        event = delivery.message
        if event.model != f"models/{self.model_name}":
            return  # another model's promotion
        if event.feature_schema_version not in ("", features.SCHEMA_VERSION):
            log.error(
                "promoted model version not served: another feature schema",
                extra={"model_version": event.model_version,
                       "feature_schema_version": event.feature_schema_version},
            )  # fmt: skip
            return
        promote_time = to_datetime(event.occur_time)
        await self.promote(event.model_version, event.artifact_uri, promote_time)

    async def promote(self, model_version: str, artifact_uri: str, promote_time: datetime) -> bool:
        """Go on from a promoted version: its model scores, its statistics learn.

        The policy becomes the version's ``policy.npz`` with every reward
        assigned after ``promote_time`` folded in, in sequence order, so every
        replica ends with the same policy whenever the promotion reaches it.
        A version without ``policy.npz`` changes only the shared part (the
        live statistics stay). False when the promotion is not new or the
        version cannot be read (logged; the current model keeps serving).
        """
        if self.promote_time is not None and promote_time <= self.promote_time:
            return False  # applied before (a restart reads the stream again)
        version = model_version.rsplit("/", 1)[-1]
        async with self._export_lock:  # an export finishing now must not serve over it
            try:
                state = await asyncio.to_thread(self._take_in, version, artifact_uri)
                promoted = bandit.Policy.from_state(state) if state is not None else None
                if promoted is not None and promoted.dim != self.policy.dim:
                    raise ValueError(f"feature dimension {promoted.dim}, serving {self.policy.dim}")
                prepared = None if self.onnx is None else await self.onnx.prepare(version)
                width = None if prepared is None else scoring.OnnxScorer.width(prepared)
                if width is not None and width != self.policy.dim:
                    raise ValueError(f"model rows of {width} features, serving {self.policy.dim}")
                async with self.db.session() as session:
                    since = await reward_store.rewards_since(session, promote_time)
                await self._triton_loaded(version)
            except Exception as exc:
                log.error(
                    "promoted model version not served",
                    extra={"model_version": model_version, "error": repr(exc)},
                )
                return False
            async with self.lock:
                refolded = 0
                if promoted is not None:
                    # Only the rewards this policy has folded in: the others reach
                    # the promoted one through apply(), each once.
                    mine = [r for r in since if self.folded_in(r.seq)]
                    refolded = await asyncio.to_thread(self._learn_all, promoted, mine)
                # The model and the statistics change together: no decision sees one
                # without the other (nothing is awaited from here on).
                if self.onnx is not None and prepared is not None:
                    self.onnx.use(prepared)
                if self.triton is not None:
                    self.triton.version = version
                if promoted is not None:
                    self.policy = promoted
                self._renew_lease()
                self.online_updates = refolded
                self.promoted_version, self.promote_time = model_version, promote_time
                self.model_load_time = datetime.now(UTC)
        await self.snapshot(force=True)
        log.info(
            "serving the promoted model version",
            extra={"model_version": model_version, "with_statistics": promoted is not None,
                   "rewards_since": refolded},
        )  # fmt: skip
        return True

    @classmethod
    def _learn_all(cls, policy: bandit.Policy, rewards: Iterable[Rewarded]) -> int:
        return sum(cls._learn(policy, r) for r in rewards)

    def _take_in(self, version: str, artifact_uri: str) -> bytes | None:
        """The promoted version in this repository (copied in when it lives elsewhere);
        its ``policy.npz``."""
        target = self.repository / self.model_name / version
        source = Path(unquote(urlparse(artifact_uri).path)).parent
        if (target / "model.onnx").is_file():
            if source != target and _differ(source / "model.onnx", target / "model.onnx"):
                # Two repositories numbering versions on their own: never serve the wrong one.
                raise ValueError(
                    f"version {version} in {self.repository} is another model than "
                    f"{artifact_uri}: the registry and the recommender must share one repository"
                )
        else:
            if not (source / "model.onnx").is_file():
                raise FileNotFoundError(f"{artifact_uri}: no model.onnx")
            staging = onnx_export.staging_dir(target.parent, version)
            for name in ("model.onnx", onnx_export.STATE_FILE):
                if (source / name).is_file():
                    shutil.copyfile(source / name, staging / name)
            try:
                os.replace(staging, target)
            except OSError:  # another replica copied it in first
                shutil.rmtree(staging, ignore_errors=True)
                if not (target / "model.onnx").is_file():
                    raise
        return onnx_export.read_state(self.repository, self.model_name, version)

    def artifact_uri(self, model_version: str) -> str:
        version = model_version.rsplit("/", 1)[-1]
        path = (self.repository / self.model_name / version / "model.onnx").resolve()
        return path.as_uri()


def _differ(a: Path, b: Path) -> bool:
    """Whether two model files differ (one missing counts as the same: nothing to compare)."""
    if not a.is_file():
        return False
    return a.stat().st_size != b.stat().st_size or a.read_bytes() != b.read_bytes()
