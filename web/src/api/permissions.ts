// What the signed-in caller may do: GET /v1/me (api/routes/identity.py) names its role and every
// operation the role allows (`METHOD /v1/template`, the API's route table, api/auth/roles.py).
// Pages offer a write only when it is allowed, rather than a button answered by 403.

import { useEffect, useState } from "react";

import { credential } from "./auth";
import { apiGet } from "./client";

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

let cache: { credential: string | null; answer: Promise<Me | null> } | null = null;

/** The caller (GET /v1/me), fetched once per credential and page load, shared by every page:
 * `undefined` while loading, `null` if it could not be read. */
export function useMe(): Me | null | undefined {
  const [me, setMe] = useState<Me | null | undefined>(undefined);
  useEffect(() => {
    const current = credential();
    if (cache === null || cache.credential !== current) {
      cache = { credential: current, answer: apiGet<Me>("/v1/me").catch(() => null) };
    }
    let live = true;
    void cache.answer.then((answer) => {
      if (live) setMe(answer);
    });
    return () => {
      live = false;
    };
  }, []);
  return me;
}
