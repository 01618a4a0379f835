// `node child/node/main.js --fds IN,OUT,CAPTURE_OUT,CAPTURE_ERR,FATAL [APP_DIR]`:
// serve one Node.js app over protocol/PROTOCOL.md.
//
// Node cannot point fd 1 elsewhere, so the supervisor starts it with the
// protocol away from fd 1 (supervisor/child_launch.py): IN and OUT carry the
// frames, fds 1 and 2 are the write ends of two capture pipes whose read ends
// are CAPTURE_OUT and CAPTURE_ERR, and FATAL is the supervisor's stderr pipe,
// for reports that must outlive the runtime (an uncaught exception). The
// runtime first makes its descriptors private (close-on-exec, so that a
// subprocess of the app inherits none of them), then starts the protocol's I/O
// on a worker thread (io_worker.js), then runs the app on this thread.
//
// What the app prints through process.stdout/stderr (console.log, ...) is
// forwarded as log lines of the request whose code printed it (found through
// AsyncLocalStorage, so concurrent requests are told apart); output written to
// fds 1 and 2 directly is read by the worker.

import fs from "node:fs";
import { AsyncLocalStorage } from "node:async_hooks";
import path from "node:path";
import { Worker } from "node:worker_threads";


const RUNTIME_VERSION = `appvisor-node-child 0.1.0 (node ${process.version})`;
const MAX_LINE = 64 * 1024;
const EX_CONFIG = 78;

class RequestFailed extends Error {
  constructor(info) {
    super(info.message);
    this.info = info;
  }
}

const CANCELLED = { type: "cancelled", message: "the request was cancelled" };

// -- descriptors ---------------------------------------------------------------

function parseArgs(argv) {
  let fds = null;
  let appDir = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--fds") fds = argv[++i].split(",").map(Number);
    else appDir = argv[i];
  }
  if (!fds || fds.length !== 5 || fds.some((fd) => !Number.isInteger(fd))) {
    process.stderr.write("usage: main.js --fds IN,OUT,CAPTURE_OUT,CAPTURE_ERR,FATAL [APP_DIR]\n");
    process.exit(64);
  }
  return { fds, appDir };
}

/** A close-on-exec copy of an inherited descriptor (libuv opens with O_CLOEXEC). */
function privateCopy(fd, flags) {
  try {
    const copy = fs.openSync(`/proc/self/fd/${fd}`, flags);
    fs.closeSync(fd);
    return copy;
  } catch {
    return fd; // no /proc (or another user's pipe): keep the inherited one
  }
}

const { fds, appDir: startApp } = parseArgs(process.argv.slice(2));
const { O_RDONLY, O_WRONLY, O_NONBLOCK } = fs.constants;
const protocolIn = privateCopy(fds[0], O_RDONLY | O_NONBLOCK);
if (protocolIn !== fds[0] && fds[0] === 0) {
  // The lowest free descriptor is 0 again: whatever reads stdin now reads nothing.
  const devnull = fs.openSync("/dev/null", O_RDONLY);
  if (devnull !== 0) fs.closeSync(devnull);
}
const protocolOut = privateCopy(fds[1], O_WRONLY);
const captureStdout = privateCopy(fds[2], O_RDONLY | O_NONBLOCK);
const captureStderr = privateCopy(fds[3], O_RDONLY | O_NONBLOCK);
const fatal = privateCopy(fds[4], O_WRONLY);

function reportFatal(text) {
  try {
    fs.writeSync(fatal, text.endsWith("\n") ? text : `${text}\n`);
  } catch {
    // nowhere left to report to
  }
}

process.on("uncaughtException", (error) => {
  reportFatal(`uncaught exception in the app: ${error?.stack ?? error}`);
  process.exit(1);
});

// Imported only now: a failure to import them (a broken install) is reported on
// the fatal channel, where fd 2 would lose it (nothing reads the capture pipe yet).
let modules;
try {
  modules = await Promise.all([import("./app_loader.js"), import("./schemas.js"), import("./wire_values.js")]);
} catch (error) {
  reportFatal(`the JavaScript child runtime cannot start: ${error?.stack ?? error}`);
  process.exit(70);
}
const [{ LoadError, describeApp, loadApp }, { adaptFiles }, { toWire }] = modules;

// -- the I/O worker ------------------------------------------------------------

const parentPid = Number(process.env.SUPERVISOR_PARENT_PID) || 0;
const io = new Worker(new URL("./io_worker.js", import.meta.url), {
  workerData: { protocolIn, protocolOut, captureStdout, captureStderr, parentPid },
});
let exiting = false;
io.on("message", (note) => {
  if (note.kind === "message") dispatch(note.message);
  else if (note.kind === "exit") {
    exiting = true;
    process.exit(note.code);
  }
});
io.on("error", (error) => {
  reportFatal(`the protocol worker failed: ${error?.stack ?? error}`);
  process.exit(70);
});
io.on("exit", () => {
  if (!exiting) process.exit(70);
});

function send(message) {
  io.postMessage({ kind: "send", message });
}

// -- output of the app ------------------------------------------------------------

const currentRequest = new AsyncLocalStorage();

class RequestStream {
  constructor(stream) {
    this.stream = stream;
    this.pending = new Map();
  }

  write(text) {
    const id = currentRequest.getStore() ?? null;
    const lines = ((this.pending.get(id) ?? "") + text).split("\n");
    let rest = lines.pop();
    while (rest.length > MAX_LINE) {
      lines.push(rest.slice(0, MAX_LINE));
      rest = rest.slice(MAX_LINE);
    }
    if (rest) this.pending.set(id, rest);
    else this.pending.delete(id);
    for (const line of lines) send({ type: "log", id, stream: this.stream, message: line });
  }

  /** Send a request's unfinished line before its end. */
  flush(id) {
    const rest = this.pending.get(id);
    if (rest !== undefined) {
      this.pending.delete(id);
      send({ type: "log", id, stream: this.stream, message: rest });
    }
  }
}

const outputs = ["stdout", "stderr"].map((name) => {
  const target = new RequestStream(name);
  process[name].write = (chunk, encoding, callback) => {
    if (typeof encoding === "function") callback = encoding;
    target.write(typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8"));
    if (typeof callback === "function") process.nextTick(callback);
    return true;
  };
  return target;
});

// -- requests --------------------------------------------------------------------

let app = null;
let appName = null;
let unloading = false;
const open = new Map();

function errorInfo(error, type) {
  if (error instanceof RequestFailed) return error.info;
  const info = { type, message: String(error?.message ?? error) || "error" };
  if (error && typeof error === "object") {
    info.exception = error.constructor?.name ?? error.name ?? "Error";
    if (typeof error.stack === "string") info.traceback = error.stack;
  } else {
    info.exception = typeof error;
  }
  return info;
}

function validationInfo(error, what) {
  const errors = error.issues.map((issue) => ({
    loc: issue.path.map((part) => (typeof part === "number" ? part : String(part))),
    msg: issue.message,
    type: issue.code,
  }));
  const fields = errors.map((e) => `${e.loc.join(".") || "(root)"}: ${e.msg}`).join("; ");
  return { type: "validation", message: `invalid ${what}: ${fields}`, exception: "ZodError", errors };
}

/** Run one request's work; it ends with exactly one result or error, or `cancelled`. */
function serve(id, work) {
  const request = { controller: new AbortController(), cancelled: false };
  const cancelled = new Promise((_, reject) => {
    request.cancel = () => reject(new RequestFailed(CANCELLED));
  });
  cancelled.catch(() => {});
  request.done = currentRequest.run(id, async () => {
    let message;
    try {
      const output = await Promise.race([work(request), cancelled]);
      message = { type: "result", id, output: toWire(output) };
    } catch (error) {
      message = { type: "error", id, error: errorInfo(error, "app_exception") };
    }
    for (const output of outputs) output.flush(id);
    open.delete(id);
    send(message);
  });
  open.set(id, request);
}

function cancel(id) {
  const request = open.get(id);
  if (request === undefined || request.cancelled) return;
  request.cancelled = true;
  request.controller.abort();
  request.cancel();
}

function requestMetadata(id, metadata, request) {
  return {
    ...metadata,
    signal: request.controller.signal,
    log(message) {
      send({ type: "log", id, stream: "log", message: String(message) });
    },
    progress(fraction = null, message = null, { current = null, total = null } = {}) {
      if (fraction !== null && !(fraction >= 0 && fraction <= 1)) {
        throw new RangeError(`progress fraction must be within [0, 1], got ${fraction}`);
      }
      if (fraction === null && current !== null && total) fraction = Math.min(1, current / total);
      send({ type: "progress", id, fraction, current, total, message: message === null ? null : String(message) });
    },
  };
}

function manifestName(dir) {
  try {
    const match = /^name:\s*["']?([^"'#\n]+?)["']?\s*(#.*)?$/m.exec(fs.readFileSync(path.join(dir, "inf.yml"), "utf8"));
    return match ? match[1] : null;
  } catch {
    return null;
  }
}

/**
 * Where to import the app from: the link to it next to its installed packages
 * (APPVISOR_NODE_APP_LINK, made by supervisor/node_packages.py), so that its bare
 * imports find them (node runs with --preserve-symlinks); else the directory itself.
 */
function importPath(directory) {
  const link = process.env.APPVISOR_NODE_APP_LINK;
  try {
    if (link && fs.realpathSync(link) === fs.realpathSync(directory)) return link;
  } catch {
    // a stale or missing link: import from the directory
  }
  return directory;
}

async function load(appDir, env) {
  if (env && Object.keys(env).length > 0) {
    // A pre-started child takes on exactly the environment a fresh one would have.
    for (const key of Object.keys(process.env)) delete process.env[key];
    Object.assign(process.env, env);
  }
  const directory = path.resolve(appDir);
  try {
    process.chdir(directory);
  } catch (error) {
    throw new RequestFailed({ type: "load_failed", message: `cannot enter ${directory}: ${error.message}` });
  }
  try {
    app = await loadApp(directory, importPath(directory));
  } catch (error) {
    const info = errorInfo(error, "load_failed");
    if (error instanceof LoadError) delete info.traceback;
    throw new RequestFailed(info);
  }
  appName = manifestName(directory) ?? path.basename(directory);
  return describeApp(appName, app);
}

async function setup(message, request) {
  let config = message.config ?? {};
  if (app.setup) {
    const parsed = await app.setup.safeParseAsync(config);
    if (!parsed.success) throw new RequestFailed(validationInfo(parsed.error, "setup config"));
    config = parsed.data;
  }
  if (typeof app.instance.setup !== "function") return null;
  try {
    await app.instance.setup(config, requestMetadata(message.id, message.metadata ?? {}, request));
  } catch (error) {
    throw new RequestFailed(errorInfo(error, "setup_failed"));
  }
  return null;
}

async function run(message, request) {
  const fn = app.functions.get(message.function);
  if (fn === undefined) {
    const names = [...app.functions.keys()].sort().join(", ") || "none";
    throw new RequestFailed({
      type: "unknown_function",
      message: `the app has no function '${message.function}'; it has ${names}`,
    });
  }
  const parsed = await fn.input.safeParseAsync(adaptFiles(fn.input, message.input));
  if (!parsed.success) {
    throw new RequestFailed(validationInfo(parsed.error, `input of '${fn.name}'`));
  }
  const metadata = requestMetadata(message.id, message.metadata ?? {}, request);
  if (!fn.streaming) return app.instance[fn.name](parsed.data, metadata);
  let last = null;
  let count = 0;
  const generator = app.instance[fn.name](parsed.data, metadata);
  try {
    for await (const item of generator) {
      if (request.cancelled) break;
      last = toWire(item);
      count++;
      send({ type: "partial", id: message.id, output: last });
    }
  } finally {
    if (request.cancelled) await generator.return?.();
  }
  if (count === 0 && !request.cancelled) {
    throw new RequestFailed({ type: "app_exception", message: `'${fn.name}' yielded no output` });
  }
  return last;
}

async function unload() {
  unloading = true;
  for (const id of [...open.keys()]) cancel(id);
  await Promise.allSettled([...open.values()].map((request) => request.done));
  if (app !== null && typeof app.instance.unload === "function") {
    try {
      await currentRequest.run(null, () => app.instance.unload());
    } catch (error) {
      process.stderr.write(`unload() raised: ${error?.stack ?? error}\n`);
    }
  }
  send({ type: "unloaded" });
  io.postMessage({ kind: "exit", code: 0 });
}

function dispatch(message) {
  switch (message.type) {
    case "load":
      serve(message.id, async () => {
        const description = await load(message.app_dir, message.env);
        return message.describe === false ? null : description;
      });
      break;
    case "setup":
      serve(message.id, (request) => setup(message, request));
      break;
    case "run":
      serve(message.id, (request) => run(message, request));
      break;
    case "cancel":
      cancel(message.id);
      break;
    case "unload":
      if (!unloading) unload();
      break;
    default:
  }
}

// -- start -----------------------------------------------------------------------

async function start() {
  const hello = { type: "hello", protocol_version: 1, pid: process.pid, runtime_version: RUNTIME_VERSION, app: null, shared_memory: false };
  if (startApp === null) {
    send(hello);
    return;
  }
  try {
    hello.app = await load(startApp, {});
    send(hello);
  } catch (error) {
    send(hello);
    send({ type: "error", id: null, error: errorInfo(error, "load_failed") });
    io.postMessage({ kind: "exit", code: EX_CONFIG });
  }
}

start();

