/** Tokens as the client sees them: a fixed JWT or a function that fetches a fresh one. */

/** A user JWT (scope `subscribe`), or a function called before every connect and unary call,
 * so a token that expired (Closing REASON_TOKEN_EXPIRED) is replaced by a fresh one. */
export type TokenSource = string | (() => string | Promise<string>);

export async function resolveToken(source: TokenSource): Promise<string> {
  return typeof source === "string" ? source : await source();
}

export interface TokenClaims {
  readonly sub: string;
  readonly tenant: string;
  readonly exp: number | undefined;
}

/**
 * The subject, tenant and expiry a JWT names, read WITHOUT verifying it (the server verifies):
 * for naming the resume state of this user and showing who is signed in, never for trust.
 * `tenantClaim` is the server's HERALD_AUTH_TENANT_CLAIM (default "tenant").
 */
export function readClaims(token: string, tenantClaim = "tenant"): TokenClaims {
  const payload = token.split(".")[1];
  if (payload === undefined) throw new Error("not a JWT: it has no payload part");
  const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  const claims = JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;
  const sub = claims.sub;
  const tenant = claims[tenantClaim];
  if (typeof sub !== "string" || typeof tenant !== "string") {
    throw new Error(`not a Herald user token: it lacks "sub" or "${tenantClaim}"`);
  }
  return { sub, tenant, exp: typeof claims.exp === "number" ? claims.exp : undefined };
}
