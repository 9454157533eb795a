// Sign-in: StartWebSignIn gives the provider's authorization URL (PKCE and
// nonce stay with the auth service); the provider sends the browser back to
// /app/?code&state, and CompleteWebSignIn turns that into the mesh's tokens.
import { useEffect, useState } from "preact/hooks";
import { ApiError } from "../api";
import { auth, PROVIDERS } from "../endpoints";
import type { IdentityProviderJson } from "../gen/tips/auth/v1/identity_pb";
import { session } from "../session";
import { Button, ErrorNotice, Screen } from "../ui";
import { isConnectionCallback } from "./Connections";

export interface Callback {
  busy: boolean;
  error: unknown;
}

/** Finishes a sign-in the provider redirected back with, once, then cleans the URL. */
export function useSignInCallback(): Callback {
  // A connection's callback carries a state too: not a sign-in (Connections.tsx).
  const signingIn = () => new URLSearchParams(location.search).has("state") && !isConnectionCallback();
  const [state, setState] = useState<Callback>(() => ({ busy: signingIn(), error: undefined }));
  useEffect(() => {
    const params = new URLSearchParams(location.search);
    const returned = params.get("state");
    if (!returned || !signingIn()) return;
    // The code must not stay in the address bar or the history.
    history.replaceState(null, "", `${location.pathname}#/`);
    const fail = (message: string) =>
      setState({ busy: false, error: new ApiError(400, { code: 3, message }) });
    if (!session.takeState(returned)) {
      fail("This sign-in was not started here, or it was already used. Start again.");
      return;
    }
    const error = params.get("error");
    auth
      .completeWebSignIn(
        returned,
        params.get("code") ?? "",
        error ?? "",
        params.get("error_description") ?? "",
      )
      .then((answer) => {
        session.signedIn(answer);
        setState({ busy: false, error: undefined });
      })
      .catch((err: unknown) => setState({ busy: false, error: err }));
  }, []);
  return state;
}

function deviceName(): string {
  const agent = navigator.userAgent;
  const browser = /Firefox\//.test(agent)
    ? "Firefox"
    : /Edg\//.test(agent)
      ? "Edge"
      : /Chrom(e|ium)\//.test(agent)
        ? "Chrome"
        : /Safari\//.test(agent)
          ? "Safari"
          : "a browser";
  return `Web (${browser})`;
}

export function SignIn({ callback, notice }: { callback: Callback; notice: string }) {
  const [busy, setBusy] = useState<IdentityProviderJson | null>(null);
  const [error, setError] = useState<unknown>(undefined);

  async function start(provider: IdentityProviderJson) {
    setBusy(provider);
    setError(undefined);
    try {
      const started = await auth.startWebSignIn(provider, `${location.origin}/app/`, deviceName());
      session.rememberState(started.state ?? "");
      location.assign(started.authorizationUri ?? "");
    } catch (err) {
      setError(err);
      setBusy(null);
    }
  }

  return (
    <main id="main" class="signin">
      <Screen title="Sign in to Tips">
        <p>One good tip at the right moment, from your calendar, activity and sleep.</p>
        {notice && (
          <p class="notice" role="status">
            {notice}
          </p>
        )}
        {callback.busy && (
          <p role="status" aria-live="polite">
            Signing you in…
          </p>
        )}
        <ErrorNotice error={callback.error ?? error} />
        <div class="stack">
          {PROVIDERS.map((p) => (
            <Button
              key={p.id}
              kind="primary"
              busy={busy === p.id}
              disabled={callback.busy || busy !== null}
              onClick={() => void start(p.id)}
            >
              Sign in with {p.label}
            </Button>
          ))}
        </div>
      </Screen>
    </main>
  );
}
