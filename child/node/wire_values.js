// App values as protocol values: maps with str keys, arrays, str, numbers,
// booleans, nil and bytes. An object with toJSON (the SDK's File, a Date) is
// what its toJSON returns, as JSON.stringify would have it; bytes stay bytes
// (msgpack bin), which JSON could not carry.

const MAX_DEPTH = 256;

export function toWire(value, depth = 0) {
  if (depth > MAX_DEPTH) throw new TypeError("output nested too deeply (a cycle?)");
  if (value === undefined || value === null) return null;
  switch (typeof value) {
    case "string":
    case "boolean":
      return value;
    case "number":
      return Number.isFinite(value) ? value : null;
    case "bigint":
      return value;
    case "function":
    case "symbol":
      return null;
    default:
  }
  if (value instanceof Uint8Array) return value;
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (typeof value.toJSON === "function") return toWire(value.toJSON(), depth + 1);
  if (Array.isArray(value)) return value.map((item) => toWire(item, depth + 1));
  if (value instanceof Map) {
    return Object.fromEntries([...value].map(([k, v]) => [String(k), toWire(v, depth + 1)]));
  }
  const out = {};
  for (const [key, item] of Object.entries(value)) {
    if (item !== undefined && typeof item !== "function") out[key] = toWire(item, depth + 1);
  }
  return out;
}
