// The one way the app talks to the mesh: JSON over the REST edge, same origin.
// Errors arrive as google.rpc.Status; ApiError keeps it, with the field
// violations (google.rpc.BadRequest) and the reason (google.rpc.ErrorInfo)
// pulled out so a screen can point at the field that is wrong.
import type { StatusJson } from "./gen/google/rpc/status_pb";
import type { HttpRoute } from "./gen/rest";
import { session } from "./session";

const BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest";
const ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo";

export interface FieldViolation {
  field: string;
  description: string;
}

type Detail = { "@type"?: string; [key: string]: unknown };

export class ApiError extends Error {
  readonly httpStatus: number;
  readonly status: StatusJson;

  constructor(httpStatus: number, status: StatusJson) {
    super(status.message || `request failed (HTTP ${httpStatus})`);
    this.httpStatus = httpStatus;
    this.status = status;
  }

  private details(type: string): Detail[] {
    const details = (this.status.details ?? []) as Detail[];
    return details.filter((d) => d["@type"] === type);
  }

  get fieldViolations(): FieldViolation[] {
    return this.details(BAD_REQUEST).flatMap(
      (d) => (d.fieldViolations as FieldViolation[] | undefined) ?? [],
    );
  }

  get reason(): string | undefined {
    return this.details(ERROR_INFO)[0]?.reason as string | undefined;
  }
}

type Method = HttpRoute<unknown, unknown>["method"];

export interface CallOptions {
  /** Send the access token (default); public RPCs pass false. */
  auth?: boolean;
}

async function send(method: Method, path: string, body: unknown, auth: boolean): Promise<Response> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const token = auth ? session.accessToken() : undefined;
  if (token) headers["authorization"] = `Bearer ${token}`;
  return fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
  });
}

async function statusOf(response: Response): Promise<StatusJson> {
  try {
    const parsed: unknown = await response.json();
    if (parsed && typeof parsed === "object" && "message" in parsed) return parsed as StatusJson;
  } catch {
    // Not JSON: a proxy in between, say. Fall through to a status of our own.
  }
  return { code: 2, message: `HTTP ${response.status} ${response.statusText}`.trim(), details: [] };
}

/** Calls the edge; on 401 refreshes the session once and retries. */
export async function call<T>(
  method: Method,
  path: string,
  body?: unknown,
  options: CallOptions = {},
): Promise<T> {
  const auth = options.auth ?? true;
  let response: Response;
  try {
    response = await send(method, path, body, auth);
    if (response.status === 401 && auth && (await session.refresh())) {
      response = await send(method, path, body, auth);
    }
  } catch (error) {
    throw new ApiError(0, { code: 14, message: `cannot reach the server: ${String(error)}` });
  }
  if (!response.ok) {
    const status = await statusOf(response);
    if (response.status === 401 && auth) session.expired(status.message ?? "");
    throw new ApiError(response.status, status);
  }
  return (await response.json()) as T;
}

type Json = Record<string, unknown>;
const PATH_FIELD = /\{([A-Za-z0-9_.]+)(?:=([^}]*))?\}/g;

function fieldAt(request: Json, path: string): unknown {
  return path.split(".").reduce<unknown>((v, key) => (v as Json | undefined)?.[key], request);
}

/** Query parameters as grpc-gateway reads them: repeated keys, dotted paths for messages. */
function appendQuery(query: URLSearchParams, key: string, value: unknown): void {
  if (value === undefined || value === null || value === "") return;
  if (Array.isArray(value)) {
    for (const item of value) appendQuery(query, key, item);
  } else if (typeof value === "object") {
    for (const [k, v] of Object.entries(value as Json)) appendQuery(query, `${key}.${k}`, v);
  } else {
    query.append(key, String(value));
  }
}

/**
 * Calls one route of a google.api.http rule with its request, as grpc-gateway
 * maps it: path fields into the template, the body rule's part as JSON, the
 * rest as query parameters. The result has the response's JSON type (or the
 * type of the field `response_body` names, which the edge sends as the body).
 */
export function rest<I, O>(route: HttpRoute<I, O>, request: I): Promise<O> {
  const fields = request as Json;
  const inPath = new Set<string>();
  const path = route.path.replace(PATH_FIELD, (_, field: string, pattern: string | undefined) => {
    const value = fieldAt(fields, field);
    if (typeof value !== "string" || !value) {
      throw new ApiError(400, { code: 3, message: `${field} is required in the path` });
    }
    inPath.add(field);
    // A resource name (users/*/tips/*) keeps its slashes; each segment is escaped.
    return pattern?.includes("/") ? value.split("/").map(encodeURIComponent).join("/") : encodeURIComponent(value);
  });
  const rest = Object.entries(fields).filter(([k]) => !inPath.has(k));
  let body: unknown;
  let queryFields = rest;
  if (route.body === "*") {
    body = Object.fromEntries(rest);
    queryFields = [];
  } else if (route.body) {
    body = fields[route.body] ?? {};
    queryFields = rest.filter(([k]) => k !== route.body);
  }
  const query = new URLSearchParams();
  for (const [key, value] of queryFields) appendQuery(query, key, value);
  const url = query.size ? `${path}?${query}` : path;
  return call<O>(route.method, url, body, { auth: !route.public });
}
