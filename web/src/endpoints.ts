// Every REST call the app makes, typed by the proto3 JSON shapes that
// protoc-gen-es generates from proto/ (src/gen, `make gen`). Paths follow the
// google.api.http rules; `users/me` is the signed-in user. A breaking proto
// change (a field renamed or removed) is a type error here or in a screen.
import { call } from "./api";
import type { IdentityProviderJson } from "./gen/tips/auth/v1/identity_pb";
import type {
  CompleteWebSignInRequestJson,
  CompleteWebSignInResponseJson,
  ListSessionsResponseJson,
  SignOutRequestJson,
  StartWebSignInRequestJson,
  StartWebSignInResponseJson,
} from "./gen/tips/auth/v1/auth_service_pb";
import type { TipReactionJson } from "./gen/tips/events/v1/signal_pb";
import type { HomeScreenJson } from "./gen/tips/gateway/v1/screens_service_pb";
import type { ConnectionJson } from "./gen/tips/integrations/v1/connection_pb";
import type {
  ListConnectionsResponseJson,
  ListProvidersResponseJson,
  StartConnectionRequestJson,
  StartConnectionResponseJson,
  SyncConnectionResponseJson,
} from "./gen/tips/integrations/v1/integrations_service_pb";
import type { ConsentJson } from "./gen/tips/profile/v1/consent_pb";
import type { ErasureJson } from "./gen/tips/profile/v1/erasure_pb";
import type { ProfileJson } from "./gen/tips/profile/v1/profile_pb";
import type {
  GrantConsentRequestJson,
  ListConsentEventsResponseJson,
  ListConsentsResponseJson,
  RevokeConsentRequestJson,
} from "./gen/tips/profile/v1/profile_service_pb";
import type {
  ListTipHistoryResponseJson,
  ReactToTipRequestJson,
} from "./gen/tips/recommender/v1/recommender_service_pb";
import type { TipJson } from "./gen/tips/recommender/v1/tip_pb";

/** The body of a `body: "*"` rule: the request without its path fields. */
type Body<T, PathFields extends keyof T> = Omit<T, PathFields>;

const ME = "users/me";
const query = (params: Record<string, string | number | undefined>): string => {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined && v !== "");
  return entries.length ? `?${new URLSearchParams(entries.map(([k, v]) => [k, String(v)]))}` : "";
};

export const auth = {
  startWebSignIn: (body: StartWebSignInRequestJson) =>
    call<StartWebSignInResponseJson>("POST", "/v1/sessions:startWebSignIn", body, { auth: false }),
  completeWebSignIn: (body: CompleteWebSignInRequestJson) =>
    call<CompleteWebSignInResponseJson>("POST", "/v1/sessions:completeWebSignIn", body, {
      auth: false,
    }),
  signOut: (body: SignOutRequestJson) =>
    call<object>("POST", "/v1/sessions:signOut", body, { auth: false }),
  sessions: () => call<ListSessionsResponseJson>("GET", `/v1/${ME}/sessions`),
};

export const PROVIDERS: { id: IdentityProviderJson; label: string }[] = [
  { id: "IDENTITY_PROVIDER_GOOGLE", label: "Google" },
  { id: "IDENTITY_PROVIDER_APPLE", label: "Apple" },
];

export const tips = {
  // response_body: "home_screen"
  home: () => call<HomeScreenJson>("GET", `/v1/${ME}/home${query({ tipCount: 1 })}`),
  history: (pageToken?: string) =>
    call<ListTipHistoryResponseJson>(
      "GET",
      `/v1/${ME}/tips:history${query({ pageSize: 20, pageToken })}`,
    ),
  react: (tip: string, reaction: TipReactionJson, snoozeDuration?: string) => {
    const body: Body<ReactToTipRequestJson, "name"> = {
      reaction,
      requestId: crypto.randomUUID(),
    };
    if (snoozeDuration) body.snoozeDuration = snoozeDuration;
    // response_body: "tip"
    return call<TipJson>("POST", `/v1/${tip}:react`, body);
  },
};

export const profile = {
  get: () => call<ProfileJson>("GET", `/v1/${ME}/profile`),
  /** PATCH with the fields in `mask` (proto3 JSON names) and the etag read. */
  update: (changes: ProfileJson, mask: (keyof ProfileJson)[]) =>
    call<ProfileJson>(
      "PATCH",
      `/v1/${ME}/profile${query({ updateMask: mask.join(",") })}`,
      changes,
    ),
};

export const consents = {
  list: () => call<ListConsentsResponseJson>("GET", `/v1/${ME}/consents`),
  grant: (consent: ConsentJson) => {
    const body: Body<GrantConsentRequestJson, "name"> = {
      textVersion: consent.textVersion || "v1",
      source: "CONSENT_SOURCE_WEB",
    };
    return call<ConsentJson>("POST", `/v1/${consent.name}:grant`, body);
  },
  revoke: (consent: ConsentJson) => {
    const body: Body<RevokeConsentRequestJson, "name"> = { source: "CONSENT_SOURCE_WEB" };
    return call<ConsentJson>("POST", `/v1/${consent.name}:revoke`, body);
  },
  events: (consent: string) =>
    call<ListConsentEventsResponseJson>("GET", `/v1/${consent}/events${query({ pageSize: 50 })}`),
};

export const connections = {
  providers: () => call<ListProvidersResponseJson>("GET", "/v1/providers", undefined, { auth: false }),
  list: () => call<ListConnectionsResponseJson>("GET", `/v1/${ME}/connections`),
  start: (provider: string, returnUri: string) => {
    const body: Body<StartConnectionRequestJson, "parent"> = {
      connection: { provider },
      returnUri,
    };
    return call<StartConnectionResponseJson>("POST", `/v1/${ME}/connections:start`, body);
  },
  sync: (connection: ConnectionJson) =>
    call<SyncConnectionResponseJson>("POST", `/v1/${connection.name}:sync`, {}),
  remove: (connection: ConnectionJson) => call<object>("DELETE", `/v1/${connection.name}`),
};

export const account = {
  // response_body: "erasure"
  remove: () => call<ErasureJson>("DELETE", `/v1/${ME}`),
};
