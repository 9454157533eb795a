// The profile's preferences and quiet hours, saved with one PATCH: the fields
// named in the update mask, and the etag read, so a change made elsewhere in
// the meantime is refused (ABORTED) instead of overwritten.
import { useEffect, useState } from "preact/hooks";
import { profile } from "../endpoints";
import type { DayOfWeekJson } from "../gen/google/type/dayofweek_pb";
import type { TimeOfDayJson } from "../gen/google/type/timeofday_pb";
import type { ProfileJson, QuietHoursWindowJson } from "../gen/tips/profile/v1/profile_pb";
import { Button, ErrorNotice, Loading, Screen, Status, useAction, useLoad } from "../ui";

const DAYS: { id: DayOfWeekJson; label: string }[] = [
  { id: "MONDAY", label: "Monday" },
  { id: "TUESDAY", label: "Tuesday" },
  { id: "WEDNESDAY", label: "Wednesday" },
  { id: "THURSDAY", label: "Thursday" },
  { id: "FRIDAY", label: "Friday" },
  { id: "SATURDAY", label: "Saturday" },
  { id: "SUNDAY", label: "Sunday" },
];
const EDITABLE: (keyof ProfileJson)[] = [
  "displayName",
  "timeZone",
  "dailyTipCap",
  "channels",
  "preferredCategories",
  "mutedCategories",
  "quietHours",
];
const TIME_ZONES: string[] =
  typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : ["UTC"];

const pad = (n: number | undefined) => String(n ?? 0).padStart(2, "0");
const toInput = (t: TimeOfDayJson | null | undefined) => `${pad(t?.hours)}:${pad(t?.minutes)}`;
function fromInput(value: string): TimeOfDayJson {
  const [hours, minutes] = value.split(":").map(Number);
  return { hours: hours ?? 0, minutes: minutes ?? 0 };
}
const list = (value: string) =>
  value
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);

interface Draft {
  displayName: string;
  timeZone: string;
  dailyTipCap: number;
  push: boolean;
  email: boolean;
  preferred: string;
  muted: string;
  quietHours: QuietHoursWindowJson[];
}

function draftOf(p: ProfileJson): Draft {
  return {
    displayName: p.displayName ?? "",
    timeZone: p.timeZone || "UTC",
    dailyTipCap: p.dailyTipCap ?? 0,
    push: p.channels?.pushEnabled ?? false,
    email: p.channels?.emailEnabled ?? false,
    preferred: (p.preferredCategories ?? []).join(", "),
    muted: (p.mutedCategories ?? []).join(", "),
    quietHours: p.quietHours ?? [],
  };
}

function QuietHours(props: {
  windows: QuietHoursWindowJson[];
  onChange: (windows: QuietHoursWindowJson[]) => void;
}) {
  const { windows, onChange } = props;
  const set = (i: number, change: Partial<QuietHoursWindowJson>) =>
    onChange(windows.map((w, j) => (j === i ? { ...w, ...change } : w)));
  return (
    <fieldset>
      <legend>Quiet hours</legend>
      <p class="muted">No tip is pushed in these windows, in your time zone.</p>
      {windows.length === 0 && <p>None.</p>}
      <ul class="list">
        {windows.map((w, i) => {
          const day = DAYS.find((d) => d.id === w.dayOfWeek)?.label ?? "";
          return (
            <li key={i} class="quiet-row" aria-label={`Quiet hours ${i + 1}`}>
              <span class="field">
                <label for={`quiet-${i}-day`}>Day</label>
                <select
                  id={`quiet-${i}-day`}
                  value={w.dayOfWeek ?? "MONDAY"}
                  onChange={(e) => set(i, { dayOfWeek: e.currentTarget.value as DayOfWeekJson })}
                >
                  {DAYS.map((d) => (
                    <option key={d.id} value={d.id}>
                      {d.label}
                    </option>
                  ))}
                </select>
              </span>
              <span class="field">
                <label for={`quiet-${i}-from`}>From</label>
                <input
                  id={`quiet-${i}-from`}
                  type="time"
                  value={toInput(w.startTimeOfDay)}
                  onChange={(e) => set(i, { startTimeOfDay: fromInput(e.currentTarget.value) })}
                />
              </span>
              <span class="field">
                <label for={`quiet-${i}-to`}>To</label>
                <input
                  id={`quiet-${i}-to`}
                  type="time"
                  value={toInput(w.endTimeOfDay)}
                  onChange={(e) => set(i, { endTimeOfDay: fromInput(e.currentTarget.value) })}
                />
              </span>
              <Button
                label={`Remove quiet hours ${i + 1} (${day})`}
                onClick={() => onChange(windows.filter((_, j) => j !== i))}
              >
                Remove
              </Button>
            </li>
          );
        })}
      </ul>
      <Button
        onClick={() =>
          onChange([
            ...windows,
            {
              dayOfWeek: "MONDAY",
              startTimeOfDay: { hours: 22, minutes: 0 },
              endTimeOfDay: { hours: 7, minutes: 0 },
            },
          ])
        }
      >
        Add quiet hours
      </Button>
    </fieldset>
  );
}

export function Preferences() {
  const loaded = useLoad(() => profile.get());
  const [current, setCurrent] = useState<ProfileJson | undefined>(undefined);
  const [draft, setDraft] = useState<Draft | undefined>(undefined);
  const [saved, setSaved] = useState("");
  const save = useAction();
  useEffect(() => {
    if (loaded.data) {
      setCurrent(loaded.data);
      setDraft(draftOf(loaded.data));
    }
  }, [loaded.data]);

  if (loaded.error) return <Screen title="Preferences"><ErrorNotice error={loaded.error} /></Screen>;
  if (!draft || !current) return <Screen title="Preferences"><Loading what="your preferences" /></Screen>;

  const edit = (change: Partial<Draft>) => {
    setSaved("");
    setDraft({ ...draft, ...change });
  };
  const submit = (event: Event) => {
    event.preventDefault();
    void save.run(async () => {
      const updated = await profile.update(
        {
          displayName: draft.displayName,
          timeZone: draft.timeZone,
          dailyTipCap: draft.dailyTipCap,
          channels: { pushEnabled: draft.push, emailEnabled: draft.email },
          preferredCategories: list(draft.preferred),
          mutedCategories: list(draft.muted),
          quietHours: draft.quietHours,
          etag: current.etag ?? "",
        },
        EDITABLE,
      );
      setCurrent(updated);
      setDraft(draftOf(updated));
      setSaved("Preferences saved.");
    });
  };

  return (
    <Screen title="Preferences">
      <form onSubmit={submit} class="form" noValidate>
        <label for="display-name">Name</label>
        <input
          id="display-name"
          value={draft.displayName}
          maxLength={100}
          autocomplete="name"
          onInput={(e) => edit({ displayName: e.currentTarget.value })}
        />
        <label for="time-zone">Time zone</label>
        <select
          id="time-zone"
          value={draft.timeZone}
          onChange={(e) => edit({ timeZone: e.currentTarget.value })}
        >
          {(TIME_ZONES.includes(draft.timeZone) ? TIME_ZONES : [draft.timeZone, ...TIME_ZONES]).map(
            (zone) => (
              <option key={zone} value={zone}>
                {zone}
              </option>
            ),
          )}
        </select>
        <label for="daily-cap">Most tips a day (0: the default)</label>
        <input
          id="daily-cap"
          type="number"
          inputMode="numeric"
          min={0}
          max={50}
          value={draft.dailyTipCap}
          onInput={(e) => edit({ dailyTipCap: Number(e.currentTarget.value) })}
        />
        <fieldset>
          <legend>How tips reach you</legend>
          <label class="check">
            <input
              type="checkbox"
              checked={draft.push}
              onChange={(e) => edit({ push: e.currentTarget.checked })}
            />
            Push notifications
          </label>
          <label class="check">
            <input
              type="checkbox"
              checked={draft.email}
              onChange={(e) => edit({ email: e.currentTarget.checked })}
            />
            Email
          </label>
        </fieldset>
        <label for="preferred">More tips about (categories, comma separated)</label>
        <input
          id="preferred"
          value={draft.preferred}
          aria-describedby="categories-hint"
          onInput={(e) => edit({ preferred: e.currentTarget.value })}
        />
        <label for="muted">Never tips about</label>
        <input
          id="muted"
          value={draft.muted}
          aria-describedby="categories-hint"
          onInput={(e) => edit({ muted: e.currentTarget.value })}
        />
        <p id="categories-hint" class="muted">
          For example: movement, sleep, focus, mindfulness, hydration.
        </p>
        <QuietHours windows={draft.quietHours} onChange={(quietHours) => edit({ quietHours })} />
        <ErrorNotice error={save.error} />
        {saved && <Status message={saved} />}
        <div class="actions">
          <Button type="submit" kind="primary" busy={save.busy}>
            Save preferences
          </Button>
          <Button onClick={() => (setSaved(""), save.clear(), loaded.reload())}>Discard changes</Button>
        </div>
      </form>
    </Screen>
  );
}
