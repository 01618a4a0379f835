// Framing and encoding of PROTOCOL.md sections 3 and 4, without I/O.
//
// A frame is a 4-byte big-endian header (top bit MORE, low 31 bits the payload
// length) and its payload; a message is one msgpack map cut into frames. The
// decoder checks each header against the limits before buffering its payload.

import { Decoder, Encoder, ExtData } from "@msgpack/msgpack";

export const MAX_FRAME_SIZE = 16 * 1024 * 1024;
export const MAX_MESSAGE_SIZE = 1024 * 1024 * 1024;
const MORE = 0x80000000;

export class ProtocolError extends Error {}

const encoder = new Encoder({ ignoreUndefined: true, useBigInt64: true });

/** The frames of one message, as one buffer, split at MAX_FRAME_SIZE. */
export function encodeMessage(message) {
  const payload = encoder.encode(message);
  const frames = [];
  let offset = 0;
  do {
    const size = Math.min(MAX_FRAME_SIZE, payload.length - offset);
    const last = offset + size >= payload.length;
    const header = Buffer.alloc(4);
    header.writeUInt32BE(((last ? 0 : MORE) | size) >>> 0);
    frames.push(header, payload.subarray(offset, offset + size));
    offset += size;
  } while (offset < payload.length);
  return Buffer.concat(frames);
}

function stringKey(key) {
  if (typeof key !== "string") {
    throw new ProtocolError(`map keys must be str, got ${typeof key}`);
  }
  return key;
}

const decoder = new Decoder({ useBigInt64: false, mapKeyConverter: stringKey });

/** Values arrive as msgpack; ext types (no arenas were accepted) are refused. */
function checkValue(value, depth = 0) {
  if (value instanceof ExtData || value instanceof Date) {
    throw new ProtocolError("ext types are not allowed (no shared memory was set up)");
  }
  if (depth > 512 || value === null || typeof value !== "object" || ArrayBuffer.isView(value)) {
    return;
  }
  for (const item of Array.isArray(value) ? value : Object.values(value)) {
    checkValue(item, depth + 1);
  }
}

export function decodePayload(payload) {
  let value;
  try {
    value = decoder.decode(payload);
  } catch (error) {
    if (error instanceof ProtocolError) throw error;
    throw new ProtocolError(`invalid msgpack: ${error.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value) || ArrayBuffer.isView(value)) {
    throw new ProtocolError("a message must be a msgpack map");
  }
  checkValue(value);
  return value;
}

/** Cuts a byte stream into message payloads: feed() chunks, then take payloads. */
export class FrameDecoder {
  constructor() {
    this.chunks = [];
    this.buffered = 0;
    this.parts = [];
    this.messageSize = 0;
  }

  feed(chunk) {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** True when EOF now would cut a message. */
  get midMessage() {
    return this.buffered > 0 || this.parts.length > 0;
  }

  /** The next complete message payload, or null when more bytes are needed. */
  next() {
    for (;;) {
      if (this.buffered < 4) return null;
      const header = this.peek(4).readUInt32BE(0);
      const length = header & 0x7fffffff;
      if (length > MAX_FRAME_SIZE) {
        throw new ProtocolError(`frame of ${length} bytes exceeds max_frame_size ${MAX_FRAME_SIZE}`);
      }
      if (this.messageSize + length > MAX_MESSAGE_SIZE) {
        throw new ProtocolError(`message exceeds max_message_size ${MAX_MESSAGE_SIZE}`);
      }
      if (this.buffered < 4 + length) return null;
      this.take(4);
      const payload = this.take(length);
      this.parts.push(payload);
      this.messageSize += length;
      if ((header & MORE) === 0) {
        const message = this.parts.length === 1 ? payload : Buffer.concat(this.parts);
        this.parts = [];
        this.messageSize = 0;
        return message;
      }
    }
  }

  peek(n) {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0].subarray(0, n);
  }

  take(n) {
    if (n === 0) return Buffer.alloc(0);
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    const head = this.chunks[0];
    const out = head.subarray(0, n);
    if (head.length === n) this.chunks.shift();
    else this.chunks[0] = head.subarray(n);
    this.buffered -= n;
    return out;
  }
}
