// Benchmark app: an async no-op run over a tiny Zod schema (the Node.js twin of
// apps/noop_async). Its package.json is node_kitchen's, so both share one install.
import { z } from "zod";

export const RunInput = z.object({ i: z.number().default(0) });
export const RunOutput = z.object({ i: z.number() });

export class App {
  async setup() {}

  async run(input) {
    return { i: input.i };
  }
}
