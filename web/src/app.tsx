// The shell: sign-in gate, navigation and the hash router (#/history, ...),
// so every screen is a plain link and the server serves one index.html.
import { useEffect, useState } from "preact/hooks";
import { session, type Tokens } from "./session";
import { Account } from "./screens/Account";
import { ConnectionCallback, Connections, isConnectionCallback } from "./screens/Connections";
import { Consents } from "./screens/Consents";
import { History } from "./screens/History";
import { Preferences } from "./screens/Preferences";
import { SignIn, useSignInCallback } from "./screens/SignIn";
import { TipNow } from "./screens/TipNow";

const ROUTES = {
  "/": { label: "Tip", view: TipNow },
  "/history": { label: "History", view: History },
  "/connections": { label: "Connections", view: Connections },
  "/preferences": { label: "Preferences", view: Preferences },
  "/consents": { label: "Consents", view: Consents },
  "/account": { label: "Account", view: Account },
} as const;
type Path = keyof typeof ROUTES;

function currentPath(): Path {
  const path = location.hash.replace(/^#/, "") || "/";
  return path in ROUTES ? (path as Path) : "/";
}

function useRoute(): Path {
  const [path, setPath] = useState<Path>(currentPath);
  useEffect(() => {
    const onChange = () => setPath(currentPath());
    addEventListener("hashchange", onChange);
    return () => removeEventListener("hashchange", onChange);
  }, []);
  return path;
}

function useSession(): [Tokens | null, string] {
  const [state, setState] = useState<[Tokens | null, string]>([session.current(), ""]);
  useEffect(() => session.subscribe((tokens, reason) => setState([tokens, reason])), []);
  return state;
}

function skipToContent(event: Event) {
  event.preventDefault();
  document.getElementById("main")?.focus();
}

export function App() {
  const [tokens, reason] = useSession();
  const callback = useSignInCallback();
  const path = useRoute();
  // A provider sending the browser back after connecting an account: no session
  // needed (the one-time state names the user), and it may be another origin's.
  const [connecting] = useState(isConnectionCallback);
  if (connecting) return <ConnectionCallback />;
  if (!tokens) return <SignIn callback={callback} notice={reason} />;
  const View = ROUTES[path].view;
  return (
    <>
      {/* Not a hash link: the hash is the router's. */}
      <a class="skip" href="#main" onClick={skipToContent}>
        Skip to content
      </a>
      <header class="bar">
        <span class="brand" aria-hidden="true">
          Tips
        </span>
        <nav aria-label="Main">
          <ul>
            {Object.entries(ROUTES).map(([to, route]) => (
              <li key={to}>
                <a href={`#${to}`} aria-current={to === path ? "page" : undefined}>
                  {route.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
      </header>
      <main id="main" tabIndex={-1}>
        <View key={path} />
      </main>
    </>
  );
}
