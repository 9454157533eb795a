// Accounts the user connected (calendar, fitness, sleep) and the providers
// they can connect: connecting sends the browser to the provider's consent
// page (StartConnection). The provider sends it back to the app's
// /app/?callback=connection&code&state (the redirect URI `tips up`
// registers), where CompleteConnection exchanges the code and names the
// return URI: this screen, with ?connection=...&result=ok|denied|error.
import { ApiError } from "../api";
import { connections } from "../endpoints";
import type { ConnectionJson } from "../gen/tips/integrations/v1/connection_pb";
import type { ProviderJson } from "../gen/tips/integrations/v1/provider_pb";
import { CONNECTION_STATE, iso, when } from "../format";
import { Button, ErrorNotice, Loading, Screen, Status, useAction, useLoad } from "../ui";
import { useEffect, useState } from "preact/hooks";

const RETURN = "/app/#/connections";

/** Whether this page is the provider's redirect back (which needs no session). */
export function isConnectionCallback(): boolean {
  return new URLSearchParams(location.search).get("callback") === "connection";
}

/** The provider's redirect back: completes the connection, then goes to its return URI. */
export function ConnectionCallback() {
  const [error, setError] = useState<unknown>(undefined);
  useEffect(() => {
    const params = new URLSearchParams(location.search);
    // The code must not stay in the address bar or the history.
    history.replaceState(null, "", RETURN);
    connections
      .complete(params)
      .then((answer) => location.replace(answer.redirectUri || RETURN))
      .catch((err: unknown) => setError(err));
  }, []);
  return (
    <main id="main">
      <Screen title="Connecting">
        {error ? (
          <>
            <ErrorNotice error={error} />
            <p>
              <a href={RETURN}>Back to connections</a>
            </p>
          </>
        ) : (
          <p role="status" aria-live="polite">
            Finishing the connection…
          </p>
        )}
      </Screen>
    </main>
  );
}

interface Returned {
  connection: string;
  result: string;
}

/** What the callback sent this screen (once), removed from the address bar. */
function takeReturned(): Returned | null {
  const params = new URLSearchParams(location.search);
  const result = params.get("result");
  if (!result) return null;
  history.replaceState(null, "", `${location.pathname}${location.hash}`);
  return { connection: params.get("connection") ?? "", result };
}

function connectionId(connection: ConnectionJson): string {
  return (connection.name ?? "").split("/").pop() ?? "";
}

function ProviderRow(props: {
  provider: ProviderJson;
  connection: ConnectionJson | undefined;
  changed: (message: string) => void;
}) {
  const { provider, connection } = props;
  const action = useAction();
  const label = provider.displayName ?? provider.name ?? "";
  // Not authorized yet (or denied), or revoked: connecting again authorizes it anew.
  const authorize =
    connection?.state === "CONNECTION_STATE_PENDING_AUTHORIZATION" ||
    connection?.state === "CONNECTION_STATE_REVOKED";
  const connect = () =>
    action.run(async () => {
      const started = await connections.start(
        provider.name ?? "",
        `${location.origin}${RETURN}`,
        // The same connection again, not another one.
        authorize && connection ? connectionId(connection) : undefined,
      );
      location.assign(started.authorizationUri ?? "");
    });
  const sync = (c: ConnectionJson) =>
    action.run(async () => {
      await connections.sync(c);
      props.changed(`Syncing ${label}.`);
    });
  const remove = (c: ConnectionJson) =>
    action.run(async () => {
      await connections.remove(c);
      props.changed(`${label} disconnected.`);
    });
  return (
    <li class="row">
      <div>
        <strong>{label}</strong>
        <p class="muted">{provider.description}</p>
        {connection && (
          <p>
            {CONNECTION_STATE[connection.state ?? "CONNECTION_STATE_UNSPECIFIED"]}
            {connection.syncStatus?.lastSuccessTime && (
              <>
                {" · last synced "}
                <time dateTime={iso(connection.syncStatus.lastSuccessTime)}>
                  {when(connection.syncStatus.lastSuccessTime)}
                </time>
              </>
            )}
          </p>
        )}
        <ErrorNotice error={action.error} />
      </div>
      <div class="actions">
        {connection ? (
          <>
            {authorize ? (
              <Button kind="primary" busy={action.busy} onClick={() => void connect()} label={`Connect ${label}`}>
                Connect
              </Button>
            ) : (
              <Button busy={action.busy} onClick={() => void sync(connection)} label={`Sync ${label}`}>
                Sync
              </Button>
            )}
            <Button
              kind="danger"
              busy={action.busy}
              onClick={() => void remove(connection)}
              label={`Disconnect ${label}`}
            >
              Disconnect
            </Button>
          </>
        ) : provider.available ? (
          <Button kind="primary" busy={action.busy} onClick={() => void connect()} label={`Connect ${label}`}>
            Connect
          </Button>
        ) : (
          <span class="muted">Not available here</span>
        )}
      </div>
    </li>
  );
}

/** What the provider's answer means, for the person who just gave it. */
function ReturnedNotice({ returned, label }: { returned: Returned; label: string }) {
  if (returned.result === "ok") return <Status message={`${label} connected. Its first sync is running.`} />;
  const message =
    returned.result === "denied"
      ? `You did not allow Tips to read your ${label} data, so it is not connected. Choose Connect to try again.`
      : `${label} could not be connected: the provider answered with an error. Choose Connect to try again.`;
  return <ErrorNotice error={new ApiError(403, { code: 7, message, details: [] })} />;
}

export function Connections() {
  const providers = useLoad(() => connections.providers());
  const mine = useLoad(() => connections.list());
  const [message, setMessage] = useState("");
  const [returned] = useState(takeReturned);
  const byProvider = new Map((mine.data?.connections ?? []).map((c) => [c.provider, c]));
  const changed = (text: string) => {
    setMessage(text);
    mine.reload();
  };
  const came = mine.data?.connections?.find((c) => c.name === returned?.connection);
  const cameFrom = providers.data?.providers?.find((p) => p.name === came?.provider);
  return (
    <Screen title="Connections">
      <p>Connected accounts give tips their timing. You can disconnect at any time.</p>
      {message && <Status message={message} />}
      {(providers.loading && !providers.data) || (mine.loading && !mine.data) ? (
        <Loading what="connections" />
      ) : (
        <>
          {returned && (
            <ReturnedNotice returned={returned} label={cameFrom?.displayName ?? "The account"} />
          )}
          <ErrorNotice error={providers.error ?? mine.error} />
          <ul class="list" aria-label="Providers">
            {(providers.data?.providers ?? []).map((p) => (
              <ProviderRow
                key={p.name}
                provider={p}
                connection={byProvider.get(p.name)}
                changed={changed}
              />
            ))}
          </ul>
        </>
      )}
    </Screen>
  );
}
