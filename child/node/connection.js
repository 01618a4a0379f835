// The child's side of PROTOCOL.md sections 5, 8 and 9, without I/O: checks each
// message the supervisor sends (fields, types, direction, state, request ids)
// and follows the state through the messages the child sends.

import { ProtocolError } from "./framing.js";

export const PROTOCOL_VERSION = 1;

const str = (v) => typeof v === "string";
const int = (v) => typeof v === "number" && Number.isInteger(v);
const bool = (v) => typeof v === "boolean";
const map = (v) => v !== null && typeof v === "object" && !Array.isArray(v) && !ArrayBuffer.isView(v);

/** Fields of the messages a child may receive: [name, check, type name, required]. */
const INBOUND = {
  load: [["id", str, "str", true], ["app_dir", str, "str", true], ["env", map, "map", false], ["describe", bool, "bool", false]],
  setup: [["id", str, "str", true], ["config", map, "map", false], ["metadata", map, "map", false]],
  run: [["id", str, "str", true], ["function", str, "str", true], ["input", map, "map", true], ["metadata", map, "map", false]],
  cancel: [["id", str, "str", true]],
  unload: [],
  shutdown: [],
  ping: [["seq", int, "int", true]],
};
const OUTBOUND = new Set(["hello", "log", "progress", "partial", "result", "error", "unloaded", "pong", "release"]);

/** States in which each inbound message is allowed, and the state it moves to (null: unchanged). */
const AFTER_HELLO = ["empty", "loading", "loaded", "setting_up", "ready", "unloading"];
const ALLOWED = {
  load: [["empty"], "loading"],
  setup: [["loaded"], "setting_up"],
  run: [["ready"], null],
  cancel: [AFTER_HELLO, null],
  unload: [["empty", "loading", "loaded", "setting_up", "ready"], "unloading"],
  shutdown: [["awaiting_hello", ...AFTER_HELLO], "closed"],
  ping: [["awaiting_hello", ...AFTER_HELLO], null],
};

export class Connection {
  constructor() {
    this.state = "awaiting_hello";
    /** Open requests: id -> kind ("load", "setup" or "run"). */
    this.open = new Map();
  }

  /** Check a decoded message from the supervisor and update the state; throws ProtocolError. */
  receive(message) {
    const type = message.type;
    if (!str(type)) throw new ProtocolError("message lacks a str field 'type'");
    const fields = INBOUND[type];
    if (fields === undefined) {
      if (OUTBOUND.has(type)) throw new ProtocolError(`${type} may not be sent by the supervisor`);
      throw new ProtocolError(`unknown message type '${type}'`);
    }
    for (const [name, check, typeName, required] of fields) {
      if (!(name in message)) {
        if (required) throw new ProtocolError(`${type} message lacks field '${name}'`);
        continue;
      }
      const value = message[name];
      if (!check(value)) {
        throw new ProtocolError(`${type}.${name} must be ${typeName}, got ${describe(value)}`);
      }
    }
    const [states, next] = ALLOWED[type];
    if (!states.includes(this.state)) {
      throw new ProtocolError(`${type} is not allowed in state ${this.state}`);
    }
    if (type === "load" || type === "setup" || type === "run") {
      if (this.open.has(message.id)) {
        throw new ProtocolError(`request id '${message.id}' is already open`);
      }
      this.open.set(message.id, type);
    }
    if (next !== null) this.state = next;
  }

  /** Follow a message the child sends (the runtime is trusted to send valid ones). */
  sent(message) {
    switch (message.type) {
      case "hello":
        this.state = message.app == null ? "empty" : "loaded";
        break;
      case "result":
      case "error": {
        if (message.id == null) break;
        const kind = this.open.get(message.id);
        this.open.delete(message.id);
        if (this.state === "unloading") break;
        const ok = message.type === "result";
        if (kind === "load") this.state = ok ? "loaded" : "empty";
        if (kind === "setup") this.state = ok ? "ready" : "loaded";
        break;
      }
      case "unloaded":
        this.state = "closed";
        break;
      default:
    }
  }

  /** Whether a message with this id may still be sent (the request is open). */
  isOpen(id) {
    return this.open.has(id);
  }

  /** The open request to attribute fd-level output to: the single open one, else none. */
  singleOpen() {
    return this.open.size === 1 ? this.open.keys().next().value : null;
  }
}

function describe(value) {
  if (value === null) return "nil";
  if (ArrayBuffer.isView(value)) return "bin";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "int" : "float";
  if (typeof value === "object") return "map";
  return typeof value === "string" ? "str" : typeof value;
}
