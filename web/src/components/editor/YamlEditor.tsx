// The YAML editor as a lazy chunk: pages import this file, which costs nothing until rendered.

import { lazy, Suspense } from "react";

import { Loading } from "../States";
import type { MonacoYamlProps } from "./MonacoYaml";

const MonacoYaml = lazy(() => import("./MonacoYaml"));

export type { Problem } from "./markers";
export { problemsOf } from "./markers";

export function YamlEditor(props: MonacoYamlProps) {
  return (
    <Suspense fallback={<Loading what="editor" />}>
      <MonacoYaml {...props} />
    </Suspense>
  );
}
