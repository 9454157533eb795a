// What the user allows their data to be used for, with each change kept as a
// history (ListConsentEvents): who changed it, from where, when.
import { useState } from "preact/hooks";
import { consents } from "../endpoints";
import type { ConsentJson, ConsentSourceJson } from "../gen/tips/profile/v1/consent_pb";
import { CONSENT_STATE, PURPOSE, iso, when } from "../format";
import { Button, ErrorNotice, Loading, Screen, Status, useAction, useLoad } from "../ui";

const SOURCE: Record<ConsentSourceJson, string> = {
  CONSENT_SOURCE_UNSPECIFIED: "",
  CONSENT_SOURCE_APP: "in the app",
  CONSENT_SOURCE_WEB: "on the web",
  CONSENT_SOURCE_SUPPORT: "by support",
  CONSENT_SOURCE_SYSTEM: "by the system",
};

function ConsentHistory({ consent }: { consent: string }) {
  const events = useLoad(() => consents.events(consent));
  if (events.loading && !events.data) return <Loading what="history" />;
  if (events.error) return <ErrorNotice error={events.error} />;
  const items = events.data?.consentEvents ?? [];
  return (
    <ol class="history" aria-label="Changes">
      {items.length === 0 && <li>No changes yet.</li>}
      {items.map((e) => (
        <li key={e.name}>
          <time dateTime={iso(e.createTime)}>{when(e.createTime)}</time>:{" "}
          {CONSENT_STATE[e.state ?? "CONSENT_STATE_UNSPECIFIED"]}{" "}
          {SOURCE[e.source ?? "CONSENT_SOURCE_UNSPECIFIED"]}
          {e.textVersion ? ` (text ${e.textVersion})` : ""}
        </li>
      ))}
    </ol>
  );
}

function ConsentRow({ consent, changed }: { consent: ConsentJson; changed: (c: ConsentJson) => void }) {
  const action = useAction();
  const [open, setOpen] = useState(false);
  const purpose = PURPOSE[consent.purpose ?? "CONSENT_PURPOSE_UNSPECIFIED"];
  const granted = consent.state === "CONSENT_STATE_GRANTED";
  const id = (consent.name ?? "").split("/").pop() ?? "";
  const toggle = () =>
    action.run(async () =>
      changed(await (granted ? consents.revoke(consent) : consents.grant(consent))),
    );
  return (
    <li class="row consent">
      <div>
        <strong id={`consent-${id}`}>{purpose.title}</strong>
        <p class="muted">{purpose.text}</p>
        <p>
          {CONSENT_STATE[consent.state ?? "CONSENT_STATE_UNSPECIFIED"]}
          {consent.updateTime ? ` since ${when(consent.updateTime)}` : ""}
        </p>
        <ErrorNotice error={action.error} />
        <button
          type="button"
          class="link"
          aria-expanded={open}
          aria-controls={`history-${id}`}
          onClick={() => setOpen(!open)}
        >
          {open ? "Hide history" : "Show history"}
        </button>
        <div id={`history-${id}`}>{open && <ConsentHistory key={consent.updateTime} consent={consent.name ?? ""} />}</div>
      </div>
      <div class="actions">
        <Button
          kind={granted ? "danger" : "primary"}
          busy={action.busy}
          onClick={() => void toggle()}
          label={`${granted ? "Withdraw" : "Allow"} ${purpose.title}`}
        >
          {granted ? "Withdraw" : "Allow"}
        </Button>
      </div>
    </li>
  );
}

export function Consents() {
  const loaded = useLoad(() => consents.list());
  const [changes, setChanges] = useState<Record<string, ConsentJson>>({});
  const [message, setMessage] = useState("");
  const changed = (c: ConsentJson) => {
    setChanges((all) => ({ ...all, [c.name ?? ""]: c }));
    const title = PURPOSE[c.purpose ?? "CONSENT_PURPOSE_UNSPECIFIED"].title;
    setMessage(`${title}: ${CONSENT_STATE[c.state ?? "CONSENT_STATE_UNSPECIFIED"].toLowerCase()}.`);
  };
  return (
    <Screen title="Consents">
      <p>Tips uses only what you allow here. Withdrawing stops its use at once.</p>
      {message && <Status message={message} />}
      {loaded.loading && !loaded.data ? (
        <Loading what="consents" />
      ) : loaded.error ? (
        <ErrorNotice error={loaded.error} />
      ) : (
        <ul class="list" aria-label="Consents">
          {(loaded.data?.consents ?? []).map((c) => (
            <ConsentRow key={c.name} consent={changes[c.name ?? ""] ?? c} changed={changed} />
          ))}
        </ul>
      )}
    </Screen>
  );
}
