// Shared pieces of every screen: loading a resource, telling the user what
// happened (a polite live region) or what went wrong (an alert naming the
// fields the server refused), and a busy-aware button.
import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "./api";

export interface Loaded<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload: () => void;
}

/** Runs `load` on mount and on reload(); keeps the last data while reloading. */
export function useLoad<T>(load: () => Promise<T>): Loaded<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(undefined);
  const [loading, setLoading] = useState(true);
  const [generation, setGeneration] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  useEffect(() => {
    let live = true;
    setLoading(true);
    loadRef
      .current()
      .then((value) => live && (setData(value), setError(undefined)))
      .catch((err: unknown) => live && setError(err))
      .finally(() => live && setLoading(false));
    return () => {
      live = false;
    };
  }, [generation]);
  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  return { data, error, loading, reload };
}

/** Runs an action, tracking busy and error; returns whether it succeeded. */
export function useAction(): {
  busy: boolean;
  error: unknown;
  run: (action: () => Promise<unknown>) => Promise<boolean>;
  clear: () => void;
} {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const run = useCallback(async (action: () => Promise<unknown>) => {
    setBusy(true);
    setError(undefined);
    try {
      await action();
      return true;
    } catch (err) {
      setError(err);
      return false;
    } finally {
      setBusy(false);
    }
  }, []);
  return { busy, error, run, clear: () => setError(undefined) };
}

export function ErrorNotice({ error }: { error: unknown }) {
  if (!error) return null;
  const api = error instanceof ApiError ? error : undefined;
  const message = api ? api.message : String(error);
  const fields = api?.fieldViolations ?? [];
  return (
    <div class="notice error" role="alert">
      <p>{message}</p>
      {fields.length > 0 && (
        <ul>
          {fields.map((f) => (
            <li key={f.field}>
              <code>{f.field}</code>: {f.description}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

/** Polite announcements (saved, reacted) for screen readers and everyone. */
export function Status({ message }: { message: string }) {
  return (
    <p class="notice ok" role="status" aria-live="polite">
      {message}
    </p>
  );
}

export function Loading({ what }: { what: string }) {
  return (
    <p class="muted" role="status" aria-live="polite">
      Loading {what}…
    </p>
  );
}

export function Button(props: {
  onClick?: () => void;
  busy?: boolean;
  kind?: "primary" | "secondary" | "danger";
  type?: "button" | "submit";
  disabled?: boolean;
  label?: string;
  autoFocus?: boolean;
  children: ComponentChildren;
}) {
  const { onClick, busy = false, kind = "secondary", type = "button", disabled = false } = props;
  const element = useRef<HTMLButtonElement>(null);
  // The autofocus attribute works on page load only; this works whenever it mounts.
  useEffect(() => {
    if (props.autoFocus) element.current?.focus();
  }, []);
  return (
    <button
      ref={element}
      type={type}
      class={`button ${kind}`}
      onClick={onClick}
      disabled={disabled || busy}
      aria-busy={busy}
      aria-label={props.label}
    >
      {props.children}
    </button>
  );
}

/** A screen: its heading takes focus when the screen opens, for keyboard and reader users. */
export function Screen(props: { title: string; children: ComponentChildren }) {
  const heading = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    heading.current?.focus();
    document.title = `${props.title} · Tips`;
  }, [props.title]);
  return (
    <section aria-labelledby="screen-title">
      <h1 id="screen-title" tabIndex={-1} ref={heading}>
        {props.title}
      </h1>
      {props.children}
    </section>
  );
}
