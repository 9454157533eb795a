// The signed-in account: its sessions, signing out, and deleting the account
// (DeleteUser erases the user's data across the mesh; docs/erasure.md).
import { useState } from "preact/hooks";
import { account, auth } from "../endpoints";
import { iso, when } from "../format";
import { session } from "../session";
import { Button, ErrorNotice, Loading, Screen, useAction, useLoad } from "../ui";

const CONFIRM = "delete";

export function Account() {
  const sessions = useLoad(() => auth.sessions());
  const signOut = useAction();
  const remove = useAction();
  const [typed, setTyped] = useState("");
  const tokens = session.current();

  const leave = () =>
    signOut.run(async () => {
      await auth.signOut(tokens?.refreshToken ?? "");
      session.set(null, "You are signed out.");
    });
  const deleteAccount = (event: Event) => {
    event.preventDefault();
    if (typed.trim().toLowerCase() !== CONFIRM) return;
    void remove.run(async () => {
      const erasure = await account.remove();
      const done = erasure.state === "ERASURE_STATE_SUCCEEDED" ? "deleted" : "being deleted";
      session.set(null, `Your account and its data are ${done}.`);
    });
  };

  return (
    <Screen title="Account">
      <p>
        Signed in as <code>{tokens?.user}</code>.
      </p>
      <h2>Sessions</h2>
      {sessions.loading && !sessions.data ? (
        <Loading what="sessions" />
      ) : sessions.error ? (
        <ErrorNotice error={sessions.error} />
      ) : (
        <ul class="list" aria-label="Sessions">
          {(sessions.data?.sessions ?? []).map((s) => (
            <li key={s.name} class="row">
              <div>
                <strong>{s.deviceName || "Unnamed device"}</strong>
                <p class="muted">
                  Signed in <time dateTime={iso(s.createTime)}>{when(s.createTime)}</time>
                </p>
              </div>
            </li>
          ))}
        </ul>
      )}
      <ErrorNotice error={signOut.error} />
      <Button busy={signOut.busy} onClick={() => void leave()}>
        Sign out
      </Button>

      <h2>Delete my account</h2>
      <form class="form danger-zone" onSubmit={deleteAccount}>
        <p>
          This deletes your profile, consents, connections, signals and tips, everywhere. It
          cannot be undone.
        </p>
        <label for="confirm-delete">
          Type <strong>{CONFIRM}</strong> to confirm
        </label>
        <input
          id="confirm-delete"
          value={typed}
          autocomplete="off"
          onInput={(e) => setTyped(e.currentTarget.value)}
        />
        <ErrorNotice error={remove.error} />
        <Button
          type="submit"
          kind="danger"
          busy={remove.busy}
          disabled={typed.trim().toLowerCase() !== CONFIRM}
        >
          Delete my account
        </Button>
      </form>
    </Screen>
  );
}
