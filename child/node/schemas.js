// Zod schemas as JSON Schema, for the app description, and file fields.
//
// Zod 4 schemas convert themselves (their own toJSONSchema, with the app's
// registry of descriptions); zod 3 ones go through zod-to-json-schema. Either
// way a file field, the SDK's createFileSchema(z) (a string transformed into a
// File, marked with a symbol) or a plain z.object({path: z.string()}), becomes
// {"type": "string", "format": "file"}, the way the Python SDK writes a File.

import { toJSONSchema as zod4ToJSONSchema } from "zod/v4/core";
import { ignoreOverride, zodToJsonSchema } from "zod-to-json-schema";

export const FILE_SCHEMA_MARKER = Symbol.for("inferencesh.fileSchema");
const FILE_JSON = { type: "string", format: "file" };
const FILE_OBJECT_KEYS = new Set(["path", "uri", "url", "content_type", "contentType", "size", "filename"]);

export function isZodSchema(value) {
  return value !== null && typeof value === "object" && typeof value.safeParse === "function";
}

function isZod4(schema) {
  return schema !== null && typeof schema === "object" && "_zod" in schema;
}

function def(schema) {
  return isZod4(schema) ? schema._zod.def : schema?._def;
}

function shape(schema) {
  const d = def(schema);
  if (!d) return null;
  const s = typeof d.shape === "function" ? d.shape() : d.shape;
  return s && typeof s === "object" ? s : null;
}

function unwrap(schema) {
  let current = schema;
  for (let i = 0; i < 16 && current; i++) {
    const d = def(current);
    const inner = d?.innerType ?? d?.schema;
    if (!inner || d[FILE_SCHEMA_MARKER]) break;
    current = inner;
  }
  return current;
}

function isString(schema) {
  const d = def(schema);
  return d?.typeName === "ZodString" || d?.type === "string";
}

/** A file field: the SDK's marked schema, or an object of File keys with a str path. */
export function isFileSchema(schema) {
  const d = def(schema);
  if (!d) return false;
  if (d[FILE_SCHEMA_MARKER]) return true;
  if (d.typeName === "ZodEffects" && d.schema) return isFileSchema(d.schema);
  if (d.type === "pipe" && d.in) return isFileSchema(d.in);
  const fields = shape(schema);
  if (fields && "path" in fields && isString(unwrap(fields.path))) {
    return Object.keys(fields).every((key) => FILE_OBJECT_KEYS.has(key));
  }
  return false;
}

function isFileObject(schema) {
  return isFileSchema(schema) && shape(schema) !== null;
}

export function toJsonSchema(schema) {
  if (isZod4(schema)) {
    const params = {
      io: "input",
      unrepresentable: "any",
      override: (ctx) => {
        // Zod before 4.2 keeps .describe() and .meta() in a registry of its own
        // copy, which only the schema's own getters read.
        const meta = typeof ctx.zodSchema.meta === "function" ? ctx.zodSchema.meta() : undefined;
        for (const [key, value] of Object.entries(meta ?? {})) {
          if (key !== "id" && !(key in ctx.jsonSchema)) ctx.jsonSchema[key] = value;
        }
        if (isFileSchema(ctx.zodSchema)) {
          for (const key of Object.keys(ctx.jsonSchema)) {
            if (!["description", "title", "default", "examples"].includes(key)) delete ctx.jsonSchema[key];
          }
          Object.assign(ctx.jsonSchema, FILE_JSON);
        }
      },
    };
    const json = typeof schema.toJSONSchema === "function" ? schema.toJSONSchema(params) : zod4ToJSONSchema(schema, params);
    delete json.$schema;
    return json;
  }
  const json = zodToJsonSchema(schema, {
    $refStrategy: "none",
    removeAdditionalStrategy: "strict",
    effectStrategy: "input",
    override: (d) => {
      if (d[FILE_SCHEMA_MARKER] || (d.typeName === "ZodObject" && isFileSchema({ _def: d }))) {
        return d.description ? { ...FILE_JSON, description: d.description } : { ...FILE_JSON };
      }
      return ignoreOverride;
    },
  });
  delete json.$schema;
  return json;
}

/**
 * The input as the app's schema expects it: a file field arrives as a str (a
 * URL or a path) or a File map ({uri, path, ...}); a marked string schema takes
 * the str, an object schema takes {path}.
 */
export function adaptFiles(schema, value, depth = 0) {
  if (depth > 32 || value === null || value === undefined || !schema) return value;
  if (isFileSchema(schema)) {
    if (isFileObject(schema)) {
      return typeof value === "string" ? { path: value } : value;
    }
    if (typeof value === "object" && !Array.isArray(value)) return value.uri ?? value.path ?? value;
    return value;
  }
  const d = def(schema);
  if (!d) return value;
  const fields = shape(schema);
  if (fields && typeof value === "object" && !Array.isArray(value)) {
    const out = { ...value };
    for (const [key, field] of Object.entries(fields)) {
      if (key in out) out[key] = adaptFiles(field, out[key], depth + 1);
    }
    return out;
  }
  const element = d.element ?? d.type?.element ?? (d.typeName === "ZodArray" ? d.type : undefined);
  if (Array.isArray(value) && element) return value.map((item) => adaptFiles(element, item, depth + 1));
  const inner = d.innerType ?? (d.typeName === "ZodEffects" ? d.schema : undefined) ?? (d.type === "pipe" ? d.in : undefined);
  return inner ? adaptFiles(inner, value, depth + 1) : value;
}
