// Accounts the user connected (calendar, fitness, sleep) and the providers
// they can connect: connecting sends the browser to the provider's consent
// page (StartConnection), which returns here.
import { connections } from "../endpoints";
import type { ConnectionJson } from "../gen/tips/integrations/v1/connection_pb";
import type { ProviderJson } from "../gen/tips/integrations/v1/provider_pb";
import { CONNECTION_STATE, iso, when } from "../format";
import { Button, ErrorNotice, Loading, Screen, Status, useAction, useLoad } from "../ui";
import { useState } from "preact/hooks";

function ProviderRow(props: {
  provider: ProviderJson;
  connection: ConnectionJson | undefined;
  changed: (message: string) => void;
}) {
  const { provider, connection } = props;
  const action = useAction();
  const label = provider.displayName ?? provider.name ?? "";
  const connect = () =>
    action.run(async () => {
      const started = await connections.start(
        provider.name ?? "",
        `${location.origin}/app/#/connections`,
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
            <Button busy={action.busy} onClick={() => void sync(connection)} label={`Sync ${label}`}>
              Sync
            </Button>
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

export function Connections() {
  const providers = useLoad(() => connections.providers());
  const mine = useLoad(() => connections.list());
  const [message, setMessage] = useState("");
  const byProvider = new Map((mine.data?.connections ?? []).map((c) => [c.provider, c]));
  const changed = (text: string) => {
    setMessage(text);
    mine.reload();
  };
  return (
    <Screen title="Connections">
      <p>Connected accounts give tips their timing. You can disconnect at any time.</p>
      {message && <Status message={message} />}
      {(providers.loading && !providers.data) || (mine.loading && !mine.data) ? (
        <Loading what="connections" />
      ) : (
        <>
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
