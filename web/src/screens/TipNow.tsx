// The current tip, why it is shown now, and the three reactions the policy
// learns from: done, snooze (for a while) and dismiss.
import { useState } from "preact/hooks";
import { tips } from "../endpoints";
import type { TipReactionJson } from "../gen/tips/events/v1/signal_pb";
import type { TipJson } from "../gen/tips/recommender/v1/tip_pb";
import { EFFORT, REACTION, when } from "../format";
import { Button, ErrorNotice, Loading, Screen, Status, useAction, useLoad } from "../ui";

const SNOOZES = [
  { label: "1 hour", duration: "3600s" },
  { label: "3 hours", duration: "10800s" },
  { label: "Tomorrow", duration: "86400s" },
];

function TipCard({ tip, onReacted }: { tip: TipJson; onReacted: (tip: TipJson) => void }) {
  const action = useAction();
  const [snooze, setSnooze] = useState(SNOOZES[0]?.duration ?? "3600s");
  const react = (reaction: TipReactionJson) =>
    action.run(async () =>
      onReacted(
        await tips.react(
          tip.name ?? "",
          reaction,
          reaction === "TIP_REACTION_SNOOZE" ? snooze : undefined,
        ),
      ),
    );
  const effort = EFFORT[tip.effort ?? "TIP_EFFORT_UNSPECIFIED"];
  return (
    <article class="card tip" aria-labelledby="tip-title">
      <p class="eyebrow">{tip.category}</p>
      <h2 id="tip-title">{tip.title}</h2>
      <p>{tip.body}</p>
      {tip.explanation && (
        <div class="why">
          <h3>Why now</h3>
          <p>{tip.explanation}</p>
        </div>
      )}
      <p class="muted">
        {[effort, tip.minutesNeeded ? `${tip.minutesNeeded} min` : ""].filter(Boolean).join(" · ")}
      </p>
      <ErrorNotice error={action.error} />
      <div class="actions" role="group" aria-label="React to this tip">
        <Button kind="primary" busy={action.busy} onClick={() => void react("TIP_REACTION_DONE")}>
          Done
        </Button>
        <span class="snooze">
          <label for="snooze-for" class="visually-hidden">
            Snooze for
          </label>
          <select
            id="snooze-for"
            value={snooze}
            onChange={(e) => setSnooze(e.currentTarget.value)}
          >
            {SNOOZES.map((s) => (
              <option key={s.duration} value={s.duration}>
                {s.label}
              </option>
            ))}
          </select>
          <Button busy={action.busy} onClick={() => void react("TIP_REACTION_SNOOZE")}>
            Snooze
          </Button>
        </span>
        <Button busy={action.busy} onClick={() => void react("TIP_REACTION_DISMISS")}>
          Dismiss
        </Button>
      </div>
    </article>
  );
}

export function TipNow() {
  const home = useLoad(() => tips.home());
  const [reacted, setReacted] = useState<TipJson | null>(null);
  const screen = home.data;
  const tip = screen?.tips?.[0];
  const missing = screen?.missingParts ?? [];

  function next() {
    setReacted(null);
    home.reload();
  }

  return (
    <Screen title="Your tip">
      {reacted ? (
        <>
          <Status
            message={`${REACTION[reacted.reaction ?? "TIP_REACTION_UNSPECIFIED"]}: ${reacted.title}${
              reacted.snoozeUntil ? ` (until ${when(reacted.snoozeUntil)})` : ""
            }.`}
          />
          {/* The reacted card is gone: focus moves on instead of to the page's start. */}
          <Button kind="primary" onClick={next} autoFocus>
            Next tip
          </Button>
        </>
      ) : home.loading && !home.data ? (
        <Loading what="your tip" />
      ) : home.error ? (
        <>
          <ErrorNotice error={home.error} />
          <Button onClick={home.reload}>Try again</Button>
        </>
      ) : tip ? (
        <TipCard tip={tip} onReacted={setReacted} />
      ) : (
        <div class="card">
          <h2>Nothing for now</h2>
          <p>
            No tip fits this moment. Allow more data under <a href="#/consents">Consents</a> or
            connect an account under <a href="#/connections">Connections</a>.
          </p>
          <Button onClick={home.reload}>Check again</Button>
        </div>
      )}
      {missing.length > 0 && (
        <p class="muted" role="note">
          Some parts could not be loaded: {missing.map((m) => m.part).join(", ")}.
        </p>
      )}
    </Screen>
  );
}
