// Words for enum values and times, in the user's locale.
import type { TipReactionJson } from "./gen/tips/events/v1/signal_pb";
import type { ConnectionStateJson } from "./gen/tips/integrations/v1/connection_pb";
import type { ConsentPurposeJson, ConsentStateJson } from "./gen/tips/profile/v1/consent_pb";
import type { TipEffortJson } from "./gen/tips/recommender/v1/catalog_tip_pb";
import type { TipStateJson } from "./gen/tips/recommender/v1/tip_pb";

// Record<Enum, string>: a value added to a proto enum is a type error until named here.
export const TIP_STATE: Record<TipStateJson, string> = {
  TIP_STATE_UNSPECIFIED: "Unknown",
  TIP_STATE_ACTIVE: "Open",
  TIP_STATE_DONE: "Done",
  TIP_STATE_SNOOZED: "Snoozed",
  TIP_STATE_DISMISSED: "Dismissed",
  TIP_STATE_EXPIRED: "Expired",
};

export const REACTION: Record<TipReactionJson, string> = {
  TIP_REACTION_UNSPECIFIED: "",
  TIP_REACTION_DONE: "Marked done",
  TIP_REACTION_SNOOZE: "Snoozed",
  TIP_REACTION_DISMISS: "Dismissed",
};

export const EFFORT: Record<TipEffortJson, string> = {
  TIP_EFFORT_UNSPECIFIED: "",
  TIP_EFFORT_LOW: "Easy",
  TIP_EFFORT_MEDIUM: "Some effort",
  TIP_EFFORT_HIGH: "A real effort",
};

export const PURPOSE: Record<ConsentPurposeJson, { title: string; text: string }> = {
  CONSENT_PURPOSE_UNSPECIFIED: { title: "Other", text: "" },
  CONSENT_PURPOSE_CALENDAR_DATA_FOR_TIPS: {
    title: "Calendar",
    text: "Use your calendar's free and busy times to time tips.",
  },
  CONSENT_PURPOSE_FITNESS_DATA_FOR_TIPS: {
    title: "Fitness",
    text: "Use your steps and workouts for movement tips.",
  },
  CONSENT_PURPOSE_SLEEP_DATA_FOR_TIPS: {
    title: "Sleep",
    text: "Use how you slept to pace the day's tips.",
  },
  CONSENT_PURPOSE_MOOD_DATA_FOR_TIPS: { title: "Mood", text: "Use the moods you log." },
  CONSENT_PURPOSE_EMAIL_NOTIFICATIONS: { title: "Email", text: "Send tips by email." },
  CONSENT_PURPOSE_PUSH_NOTIFICATIONS: { title: "Push", text: "Send tips as notifications." },
  CONSENT_PURPOSE_MODEL_TRAINING: {
    title: "Improving tips",
    text: "Use your reactions to train the model for everyone.",
  },
  CONSENT_PURPOSE_PRODUCT_ANALYTICS: { title: "Analytics", text: "Measure how the app is used." },
};

export const CONSENT_STATE: Record<ConsentStateJson, string> = {
  CONSENT_STATE_UNSPECIFIED: "Unknown",
  CONSENT_STATE_UNDECIDED: "Not decided",
  CONSENT_STATE_GRANTED: "Allowed",
  CONSENT_STATE_REVOKED: "Withdrawn",
};

export const CONNECTION_STATE: Record<ConnectionStateJson, string> = {
  CONNECTION_STATE_UNSPECIFIED: "Unknown",
  CONNECTION_STATE_PENDING_AUTHORIZATION: "Waiting for authorization",
  CONNECTION_STATE_ACTIVE: "Connected",
  CONNECTION_STATE_PAUSED: "Paused",
  CONNECTION_STATE_ERROR: "Needs attention",
  CONNECTION_STATE_REVOKED: "Disconnected",
};

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** A proto3 JSON timestamp for people; "" for an unset one (null or absent). */
export function when(timestamp: string | null | undefined): string {
  if (!timestamp) return "";
  const date = new Date(timestamp);
  return Number.isNaN(date.getTime()) ? "" : dateTime.format(date);
}

/** The machine-readable form for <time datetime>. */
export function iso(timestamp: string | null | undefined): string | undefined {
  return timestamp || undefined;
}
