// Module resolution hooks: a bare import the app directory cannot resolve is
// looked up in the app's dependency cache, where its package.json was
// installed (supervisor/node_environment.py), so that the app directory itself
// needs no node_modules.

import path from "node:path";
import { pathToFileURL } from "node:url";

let fallbackParent = null;

export async function initialize({ packageDir }) {
  fallbackParent = pathToFileURL(path.join(packageDir, "package.json")).href;
}

function isBare(specifier) {
  return !/^(\.{0,2}\/|[a-zA-Z][a-zA-Z0-9+.-]*:)/.test(specifier);
}

export async function resolve(specifier, context, nextResolve) {
  try {
    return await nextResolve(specifier, context);
  } catch (error) {
    if (fallbackParent === null || !isBare(specifier) || error?.code !== "ERR_MODULE_NOT_FOUND") {
      throw error;
    }
    return nextResolve(specifier, { ...context, parentURL: fallbackParent });
  }
}
