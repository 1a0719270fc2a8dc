import { describe, expect, it } from "vitest";

import { can, type Me } from "../src/api/permissions";

const viewer: Me = {
  kind: "api_key",
  name: "vera",
  actor: "user:vera",
  role: "viewer",
  tenant: "default",
  allowed: ["GET /v1/mutations/{mutation_id}"],
};

describe("can", () => {
  it("offers exactly what the caller's role allows", () => {
    expect(can(viewer, "GET /v1/mutations/{mutation_id}")).toBe(true);
    expect(can(viewer, "POST /v1/mutations/{mutation_id}/approve")).toBe(false);
  });

  it("offers nothing while /v1/me loads, and everything if it failed (the API still decides)", () => {
    expect(can(undefined, "POST /v1/mutations/{mutation_id}/approve")).toBe(false);
    expect(can(null, "POST /v1/mutations/{mutation_id}/approve")).toBe(true);
  });
});
