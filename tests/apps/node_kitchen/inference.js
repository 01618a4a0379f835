// A Node.js test app with one function per behaviour the tests check.
import { execSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { File, createFileSchema } from "@inferencesh/app";
import { z } from "zod";

export const AppSetup = z.object({ greeting: z.string().default("Hello"), marker: z.string().optional() });

export const RunInput = z
  .object({
    name: z.string().describe("who to greet"),
    times: z.number().optional(),
    loud: z.boolean().optional(),
    tags: z.array(z.string()).optional(),
    mode: z.enum(["plain", "fancy"]).optional(),
    image: createFileSchema(z).optional().describe("any file"),
    doc: z.object({ path: z.string() }).optional(),
  })
  .describe("greet someone and write the greeting to a file");
export const RunOutput = z.object({
  greeting: z.string(),
  file: z.object({ path: z.string() }),
  image_size: z.number().optional(),
  doc_size: z.number().optional(),
});

export const ReverseInput = z.object({ text: z.string() });
export const ReverseOutput = z.object({ text: z.string() });

export const CountInput = z.object({ n: z.number(), delay_ms: z.number().optional() });
export const CountOutput = z.object({ i: z.number() });

export const NoisyInput = z.object({ text: z.string() });
export const NoisyOutput = z.object({ ok: z.boolean() });

export const ChatterInput = z.object({ tag: z.string(), n: z.number() });
export const ChatterOutput = z.object({ said: z.number() });

export const HoldInput = z.object({ marker: z.string(), started: z.string().optional() });
export const HoldOutput = z.object({});

export const CrashInput = z.object({ how: z.enum(["exit", "throw", "sigkill", "reject"]) });
export const CrashOutput = z.object({});

// started: a file created as the loop begins; gate: a file whose creation ends it.
export const SpinInput = z.object({
  seconds: z.number().optional(),
  started: z.string().optional(),
  gate: z.string().optional(),
});
export const SpinOutput = z.object({ spun: z.number() });

export const EnvInput = z.object({});
export const EnvOutput = z.object({
  pid: z.number(),
  cwd: z.string(),
  value: z.string().optional(),
  gpus: z.string().optional(),
});

export class App {
  async setup(config, metadata) {
    metadata.progress(0.5, "progress is for runs: the runtime drops this one");
    this.greeting = config.greeting;
    this.marker = config.marker;
    console.log(`setup with ${this.greeting}`);
  }

  async run(input, metadata) {
    const greeting = `${this.greeting}, ${input.name}!`;
    metadata.progress(0.5, "writing");
    const out = path.join(os.tmpdir(), `kitchen-${process.pid}.txt`);
    fs.writeFileSync(out, greeting);
    const result = { greeting, file: File.fromPath(out) };
    // File.from() copies a File (a URL's stays lazy); getPath() downloads or decodes it.
    if (input.image) result.image_size = fs.statSync(await (await File.from(input.image)).getPath()).size;
    if (input.doc) result.doc_size = fs.statSync(await (await File.from(input.doc)).getPath()).size;
    return result;
  }

  async reverse(input) {
    return { text: [...input.text].reverse().join("") };
  }

  async *count(input) {
    for (let i = 1; i <= input.n; i++) {
      if (input.delay_ms) await new Promise((resolve) => setTimeout(resolve, input.delay_ms));
      yield { i };
    }
  }

  async noisy(input) {
    console.log(`console.log: ${input.text}`);
    console.error(`console.error: ${input.text}`);
    process.stdout.write(`stdout.write: ${input.text}\n`);
    fs.writeSync(1, `fd 1: ${input.text}\n`);
    execSync(`echo "subprocess: ${input.text}"`, { stdio: "inherit" });
    execSync(`echo "subprocess stderr: ${input.text}" >&2`, { stdio: "inherit" });
    return { ok: true };
  }

  async chatter(input) {
    for (let i = 0; i < input.n; i++) {
      console.log(`${input.tag} ${i}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    return { said: input.n };
  }

  async hold(input, metadata) {
    if (input.started) fs.writeFileSync(input.started, "");
    await new Promise((resolve) => metadata.signal.addEventListener("abort", resolve));
    fs.writeFileSync(input.marker, "aborted");
    return {};
  }

  async crash(input) {
    if (input.how === "exit") process.exit(3);
    if (input.how === "sigkill") process.kill(process.pid, "SIGKILL");
    if (input.how === "throw") {
      setTimeout(() => {
        throw new Error("thrown outside any request");
      }, 0);
      await new Promise((resolve) => setTimeout(resolve, 5000));
    }
    throw new TypeError("the app failed on purpose");
  }

  async spin(input) {
    const until = input.seconds === undefined ? Infinity : Date.now() + input.seconds * 1000;
    let spun = 0;
    if (input.started) fs.writeFileSync(input.started, "");
    while (Date.now() < until && !(input.gate && spun % 1000 === 0 && fs.existsSync(input.gate))) {
      spun++;
    }
    return { spun };
  }

  async env() {
    const env = process.env;
    return { pid: process.pid, cwd: process.cwd(), value: env.KITCHEN_VALUE, gpus: env.CUDA_VISIBLE_DEVICES };
  }

  async unload() {
    if (this.marker) fs.writeFileSync(this.marker, "unloaded");
  }
}
