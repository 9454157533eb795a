// The one way the app talks to the mesh: JSON over the REST edge, same origin.
// Errors arrive as google.rpc.Status; ApiError keeps it, with the field
// violations (google.rpc.BadRequest) and the reason (google.rpc.ErrorInfo)
// pulled out so a screen can point at the field that is wrong.
import type { StatusJson } from "./gen/google/rpc/status_pb";
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

type Method = "GET" | "POST" | "PATCH" | "DELETE";

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
