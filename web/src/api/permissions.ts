// What the signed-in caller may do: GET /v1/me (api/routes/identity.py) names its role and every
// operation the role allows (`METHOD /v1/template`, the API's route table, api/auth/roles.py).
// Pages offer a write only when it is allowed, rather than a button answered by 403.

export interface Me {
  kind: string;
  name: string;
  actor: string;
  role: string;
  tenant: string;
  allowed: string[];
}

/** Whether `operation` (e.g. `POST /v1/mutations/{mutation_id}/approve`) may be offered.
 * Unknown while /v1/me loads (`undefined`): not offered yet. If /v1/me failed (`null`): offered,
 * and the API still decides. */
export function can(me: Me | null | undefined, operation: string): boolean {
  if (me === undefined) return false;
  if (me === null) return true;
  return me.allowed.includes(operation);
}
