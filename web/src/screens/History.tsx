// The tips decided for the user, newest first, with what became of each.
import { useState } from "preact/hooks";
import { tips } from "../endpoints";
import type { TipJson } from "../gen/tips/recommender/v1/tip_pb";
import { REACTION, TIP_STATE, iso, when } from "../format";
import { Button, ErrorNotice, Loading, Screen, useAction, useLoad } from "../ui";

export function History() {
  const first = useLoad(() => tips.history());
  const [more, setMore] = useState<TipJson[]>([]);
  const [token, setToken] = useState<string | undefined>(undefined);
  const action = useAction();
  const nextToken = token ?? first.data?.nextPageToken;
  const all = [...(first.data?.tips ?? []), ...more];

  const loadMore = () =>
    action.run(async () => {
      const page = await tips.history(nextToken);
      setMore((m) => [...m, ...(page.tips ?? [])]);
      setToken(page.nextPageToken ?? "");
    });

  return (
    <Screen title="History">
      {first.loading && !first.data ? (
        <Loading what="your history" />
      ) : first.error ? (
        <ErrorNotice error={first.error} />
      ) : all.length === 0 ? (
        <p>No tips yet.</p>
      ) : (
        <ol class="list" aria-label="Past tips">
          {all.map((tip) => (
            <li key={tip.name} class="row">
              <div>
                <strong>{tip.title}</strong>
                <p class="muted">
                  <time dateTime={iso(tip.decideTime)}>{when(tip.decideTime)}</time>
                  {tip.reactTime ? ` · ${REACTION[tip.reaction ?? "TIP_REACTION_UNSPECIFIED"]} ${when(tip.reactTime)}` : ""}
                </p>
              </div>
              <span class={`badge ${(tip.state ?? "").toLowerCase()}`}>
                {TIP_STATE[tip.state ?? "TIP_STATE_UNSPECIFIED"]}
              </span>
            </li>
          ))}
        </ol>
      )}
      <ErrorNotice error={action.error} />
      {nextToken && (
        <Button busy={action.busy} onClick={() => void loadMore()}>
          Show older tips
        </Button>
      )}
    </Screen>
  );
}
