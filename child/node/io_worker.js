// The protocol's I/O, on a worker thread that app code cannot block.
//
// It reads frames from the supervisor, checks them (connection.js), answers
// pings itself, and hands every other message to the main thread, where the
// app runs. It writes every frame the child sends, so whole messages never
// interleave. It also reads the two capture pipes that fds 1 and 2 point at:
// output written below JavaScript (a native addon, a subprocess) becomes log
// messages of the single open request, and is drained before a request's
// terminal message so that a request's output always precedes its end.
//
// A CPU-bound loop on the main thread therefore does not stop pongs. To exit,
// the worker asks the main thread; if that thread is stuck in app code, the
// worker kills the process after EXIT_GRACE_MS.

import fs from "node:fs";
import net from "node:net";
import { parentPort, workerData } from "node:worker_threads";

import { Connection } from "./connection.js";
import { FrameDecoder, ProtocolError, decodePayload, encodeMessage } from "./framing.js";

const EXIT_GRACE_MS = 1000;
const PARENT_CHECK_MS = 500;
const MAX_LINE = 64 * 1024;
const READ_SIZE = 64 * 1024;
const EX_PROTOCOL = 76;

const { protocolIn, protocolOut, captureStdout, captureStderr, parentPid } = workerData;
const connection = new Connection();
const frames = new FrameDecoder();
let pendingPings = [];
let beforeHello = [];
let exiting = false;

function write(message) {
  const bytes = encodeMessage(message);
  let offset = 0;
  while (offset < bytes.length) {
    try {
      offset += fs.writeSync(protocolOut, bytes, offset, bytes.length - offset);
    } catch (error) {
      if (error.code === "EAGAIN") {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
        continue;
      }
      // The supervisor is gone: nobody is left to tell.
      exit(70);
      return;
    }
  }
  connection.sent(message);
}

function send(message) {
  if (exiting || connection.state === "closed") return;
  if (connection.state === "awaiting_hello" && message.type === "log") {
    beforeHello.push(message); // output of an app imported before the hello: after it
    return;
  }
  const id = message.id;
  if (id != null && !connection.isOpen(id)) {
    if (message.type === "log") message = { ...message, id: null };
    else return; // the request ended (cancelled): its late events are dropped
  }
  if ((message.type === "progress" || message.type === "partial") && connection.open.get(id) !== "run") {
    return; // progress of a setup (say) has no place in the protocol
  }
  if ((message.type === "result" || message.type === "error") && id != null) {
    for (const capture of captures) capture.drain();
  }
  write(message);
  if (message.type === "hello") {
    for (const seq of pendingPings) write({ type: "pong", seq });
    for (const log of beforeHello) write(log);
    pendingPings = [];
    beforeHello = [];
  }
}

function exit(code) {
  if (exiting) return;
  exiting = true;
  parentPort.postMessage({ kind: "exit", code });
  setTimeout(() => process.kill(process.pid, "SIGKILL"), EXIT_GRACE_MS).unref();
}

function protocolError(text) {
  if (connection.state !== "closed") {
    write({ type: "error", id: null, error: { type: "protocol", message: text } });
  }
  exit(EX_PROTOCOL);
}

function receive(chunk) {
  if (exiting) return;
  try {
    frames.feed(chunk);
    for (let payload = frames.next(); payload !== null; payload = frames.next()) {
      const message = decodePayload(payload);
      connection.receive(message);
      if (message.type === "ping") {
        if (connection.state === "awaiting_hello") pendingPings.push(message.seq);
        else write({ type: "pong", seq: message.seq });
      } else if (message.type === "shutdown") {
        exit(0);
        return;
      } else {
        parentPort.postMessage({ kind: "message", message });
      }
    }
  } catch (error) {
    if (!(error instanceof ProtocolError)) throw error;
    protocolError(error.message);
  }
}

const drainBuffer = Buffer.alloc(READ_SIZE);
const EMPTY = Buffer.alloc(0);

/** One capture pipe: lines of fd-level output, as log messages. */
class Capture {
  constructor(fd, stream) {
    this.fd = fd;
    this.stream = stream;
    this.pending = "";
    this.decoder = new TextDecoder("utf-8");
    this.socket = new net.Socket({ fd, readable: true, writable: false });
    this.socket.on("data", (chunk) => this.take(chunk));
    this.socket.on("error", () => {});
  }

  take(chunk, flush = false) {
    const text = this.pending + this.decoder.decode(chunk, { stream: true });
    const lines = text.split("\n");
    this.pending = lines.pop();
    while (this.pending.length > MAX_LINE) {
      lines.push(this.pending.slice(0, MAX_LINE));
      this.pending = this.pending.slice(MAX_LINE);
    }
    if (flush && this.pending) {
      lines.push(this.pending);
      this.pending = "";
    }
    const id = connection.singleOpen();
    for (const line of lines) {
      send({ type: "log", id, stream: this.stream, message: line });
    }
  }

  /** Forward every byte written so far (the socket reads the pipe without blocking). */
  drain() {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0; // the EAGAIN that ends every drain needs no stack
    try {
      for (;;) {
        let n;
        try {
          n = fs.readSync(this.fd, drainBuffer, 0, READ_SIZE, null);
        } catch {
          break; // EAGAIN: the pipe is empty
        }
        if (n <= 0) break;
        this.take(drainBuffer.subarray(0, n));
      }
    } finally {
      Error.stackTraceLimit = limit;
    }
    if (this.pending) this.take(EMPTY, true);
  }
}

const captures = [new Capture(captureStdout, "stdout"), new Capture(captureStderr, "stderr")];

parentPort.on("message", (note) => {
  if (note.kind === "send") send(note.message);
  else if (note.kind === "exit") exit(note.code);
});

const input = new net.Socket({ fd: protocolIn, readable: true, writable: false });
input.on("data", receive);
input.on("end", () => {
  if (frames.midMessage) protocolError("end of file inside a message");
  else exit(0);
});
input.on("error", () => exit(0));

if (parentPid) {
  // The supervisor's death reparents this process: leave rather than run orphaned.
  setInterval(() => {
    if (process.ppid !== parentPid) exit(0);
  }, PARENT_CHECK_MS);
}
parentPort.postMessage({ kind: "ready" });
