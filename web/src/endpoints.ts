// Every REST call the app makes. The routes (verb, path, body, response body)
// are generated from the google.api.http rules (tools/protoc_gen_tips_rest.py)
// and the JSON types from the messages (protoc-gen-es), both in `make gen`: a
// proto change to a field, a path or a body rule is a type error here or in a
// screen. `users/me` is the signed-in user.
import { rest } from "./api";
import type { IdentityProviderJson } from "./gen/tips/auth/v1/identity_pb";
import { AuthService } from "./gen/tips/auth/v1/auth_service_rest";
import type { TipReactionJson } from "./gen/tips/events/v1/signal_pb";
import { ScreensService } from "./gen/tips/gateway/v1/screens_service_rest";
import type { ConnectionJson } from "./gen/tips/integrations/v1/connection_pb";
import { IntegrationsService } from "./gen/tips/integrations/v1/integrations_service_rest";
import type { ConsentJson } from "./gen/tips/profile/v1/consent_pb";
import type { ProfileJson } from "./gen/tips/profile/v1/profile_pb";
import { ProfileService } from "./gen/tips/profile/v1/profile_service_rest";
import { RecommenderService } from "./gen/tips/recommender/v1/recommender_service_rest";

const ME = "users/me";

export const PROVIDERS: { id: IdentityProviderJson; label: string }[] = [
  { id: "IDENTITY_PROVIDER_GOOGLE", label: "Google" },
  { id: "IDENTITY_PROVIDER_APPLE", label: "Apple" },
];

export const auth = {
  startWebSignIn: (provider: IdentityProviderJson, redirectUri: string, deviceName: string) =>
    rest(AuthService.StartWebSignIn, { provider, redirectUri, deviceName }),
  completeWebSignIn: (state: string, code: string, error: string, errorDescription: string) =>
    rest(AuthService.CompleteWebSignIn, { state, code, error, errorDescription }),
  signOut: (refreshToken: string) => rest(AuthService.SignOut, { refreshToken }),
  sessions: () => rest(AuthService.ListSessions, { parent: ME }),
};

export const tips = {
  home: () => rest(ScreensService.GetHomeScreen, { name: `${ME}/home`, tipCount: 1 }),
  history: (pageToken?: string) =>
    rest(RecommenderService.ListTipHistory, { parent: ME, pageSize: 20, pageToken }),
  react: (tip: string, reaction: TipReactionJson, snoozeDuration?: string) =>
    rest(RecommenderService.ReactToTip, {
      name: tip,
      reaction,
      snoozeDuration,
      requestId: crypto.randomUUID(),
    }),
};

export const profile = {
  get: () => rest(ProfileService.GetProfile, { name: `${ME}/profile` }),
  /** The fields in `mask` (proto3 JSON names), refused if the etag read is stale. */
  update: (changes: ProfileJson, mask: (keyof ProfileJson)[]) =>
    rest(ProfileService.UpdateProfile, {
      profile: { ...changes, name: `${ME}/profile` },
      updateMask: mask.join(","),
    }),
};

export const consents = {
  list: () => rest(ProfileService.ListConsents, { parent: ME }),
  grant: (consent: ConsentJson) =>
    rest(ProfileService.GrantConsent, {
      name: consent.name,
      textVersion: consent.textVersion || "v1",
      source: "CONSENT_SOURCE_WEB",
    }),
  revoke: (consent: ConsentJson) =>
    rest(ProfileService.RevokeConsent, { name: consent.name, source: "CONSENT_SOURCE_WEB" }),
  events: (consent: string) =>
    rest(ProfileService.ListConsentEvents, { parent: consent, pageSize: 50 }),
};

export const connections = {
  providers: () => rest(IntegrationsService.ListProviders, {}),
  list: () => rest(IntegrationsService.ListConnections, { parent: ME }),
  /** A new connection, or (with `connectionId`) authorizing a pending one again. */
  start: (provider: string, returnUri: string, connectionId?: string) =>
    rest(IntegrationsService.StartConnection, {
      parent: ME,
      connection: { provider },
      returnUri,
      connectionId,
    }),
  /** The provider's answer (a code, or an error) for the state it came back with. */
  complete: (params: URLSearchParams) =>
    rest(IntegrationsService.CompleteConnection, {
      state: params.get("state") ?? "",
      code: params.get("code") ?? "",
      scope: params.get("scope") ?? "",
      error: params.get("error") ?? "",
      errorDescription: params.get("error_description") ?? "",
    }),
  sync: (connection: ConnectionJson) =>
    rest(IntegrationsService.SyncConnection, { name: connection.name }),
  remove: (connection: ConnectionJson) =>
    rest(IntegrationsService.DeleteConnection, { name: connection.name }),
};

export const account = {
  remove: () => rest(ProfileService.DeleteUser, { name: ME }),
};
