// Who is signed in: the mesh's access and refresh tokens, kept in this tab's
// sessionStorage (gone when the tab closes; never in a cookie, so no CSRF).
// Web sign-in is the authorization code flow with PKCE that the auth service
// runs (StartWebSignIn / CompleteWebSignIn); the app only carries `state`.
import type {
  CompleteWebSignInResponseJson,
  RefreshSessionResponseJson,
} from "./gen/tips/auth/v1/auth_service_pb";

const KEY = "tips.session";
const STATE_KEY = "tips.signin.state";

export interface Tokens {
  accessToken: string;
  refreshToken: string;
  user: string;
}

type Listener = (tokens: Tokens | null, reason: string) => void;

function load(): Tokens | null {
  try {
    const raw = sessionStorage.getItem(KEY);
    return raw ? (JSON.parse(raw) as Tokens) : null;
  } catch {
    return null;
  }
}

class Session {
  private tokens: Tokens | null = load();
  private listeners = new Set<Listener>();
  private refreshing: Promise<boolean> | null = null;

  current(): Tokens | null {
    return this.tokens;
  }

  accessToken(): string | undefined {
    return this.tokens?.accessToken;
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  set(tokens: Tokens | null, reason = ""): void {
    this.tokens = tokens;
    if (tokens) sessionStorage.setItem(KEY, JSON.stringify(tokens));
    else sessionStorage.removeItem(KEY);
    for (const listener of this.listeners) listener(tokens, reason);
  }

  signedIn(answer: CompleteWebSignInResponseJson): void {
    this.set({
      accessToken: answer.accessToken ?? "",
      refreshToken: answer.refreshToken ?? "",
      user: answer.user ?? "",
    });
  }

  /** The session ended on the server (expired, revoked, account deleted). */
  expired(reason: string): void {
    if (this.tokens) this.set(null, reason || "Your session ended. Sign in again.");
  }

  /** A new access token from the refresh token (rotated); false when it is gone. */
  refresh(): Promise<boolean> {
    if (!this.tokens?.refreshToken) return Promise.resolve(false);
    this.refreshing ??= this.rotate().finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  private async rotate(): Promise<boolean> {
    const tokens = this.tokens;
    if (!tokens) return false;
    const response = await fetch("/v1/sessions:refresh", {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({ refreshToken: tokens.refreshToken }),
      credentials: "omit",
    });
    if (!response.ok) return false;
    const answer = (await response.json()) as RefreshSessionResponseJson;
    this.set({
      ...tokens,
      accessToken: answer.accessToken ?? "",
      refreshToken: answer.refreshToken ?? tokens.refreshToken,
    });
    return true;
  }

  rememberState(state: string): void {
    sessionStorage.setItem(STATE_KEY, state);
  }

  /** Whether `state` is the one this tab started, used once. */
  takeState(state: string): boolean {
    const expected = sessionStorage.getItem(STATE_KEY);
    sessionStorage.removeItem(STATE_KEY);
    return expected !== null && expected === state;
  }
}

export const session = new Session();
