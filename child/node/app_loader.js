// Import an app directory and find its functions.
//
// The app is `inference.js` at the directory's root or under `src/`. It exports
// `class App` and Zod schemas in pairs: `{Pascal}Input` and `{Pascal}Output`
// name the method `{pascal}` (RunInput/RunOutput is `run`). An optional
// `AppSetup` schema validates the setup config. A method that is an async
// generator function streams its output.

import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

import { isZodSchema, toJsonSchema } from "./schemas.js";

export const ENTRY_POINTS = ["inference.js", "src/inference.js", "inference.mjs", "src/inference.mjs"];

export class LoadError extends Error {}

const AsyncGeneratorFunction = Object.getPrototypeOf(async function* () {}).constructor;

export function findEntry(appDir) {
  for (const name of ENTRY_POINTS) {
    const file = path.join(appDir, name);
    if (fs.existsSync(file)) return file;
  }
  throw new LoadError(`${appDir} has no ${ENTRY_POINTS.slice(0, 2).join(" or ")}`);
}

/** Import the app of `appDir`, through `importDir` (the same directory, or a link to it). */
export async function loadApp(appDir, importDir = appDir) {
  const entry = findEntry(appDir);
  const module = await import(pathToFileURL(path.join(importDir, path.relative(appDir, entry))).href);
  const AppClass = module.App ?? module.default;
  if (typeof AppClass !== "function") {
    throw new LoadError(`${entry} exports no class App`);
  }
  const instance = new AppClass();
  const functions = new Map();
  for (const [name, input] of Object.entries(module)) {
    const match = /^(.+)Input$/.exec(name);
    const output = match && module[`${match[1]}Output`];
    if (!match || !isZodSchema(input) || !isZodSchema(output)) continue;
    const method = match[1][0].toLowerCase() + match[1].slice(1);
    if (typeof instance[method] !== "function") {
      throw new LoadError(`${entry} exports ${name} and ${match[1]}Output but App has no method ${method}()`);
    }
    functions.set(method, {
      name: method,
      input,
      output,
      streaming: instance[method] instanceof AsyncGeneratorFunction,
    });
  }
  if (functions.size === 0) {
    throw new LoadError(`${entry} exports no {Name}Input/{Name}Output Zod schema pair (e.g. RunInput and RunOutput)`);
  }
  const setup = isZodSchema(module.AppSetup) ? module.AppSetup : null;
  return { instance, functions, setup, entry };
}

export function describeApp(name, app) {
  const functions = {};
  for (const fn of app.functions.values()) {
    functions[fn.name] = {
      description: fn.input.description ?? "",
      input_schema: toJsonSchema(fn.input),
      output_schema: toJsonSchema(fn.output),
      streaming: fn.streaming,
      extra: { runtime: "node" },
    };
  }
  return { name, functions, setup_schema: app.setup ? toJsonSchema(app.setup) : null };
}
