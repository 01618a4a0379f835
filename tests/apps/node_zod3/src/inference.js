// A zod 3 app under src/, with every field type the schemas must render.
import { File, createFileSchema } from "@inferencesh/app";
import { z } from "zod";

export const RunInput = z
  .object({
    text: z.string().describe("some text"),
    count: z.number().optional(),
    flag: z.boolean(),
    tags: z.array(z.string()),
    mode: z.enum(["a", "b"]),
    image: createFileSchema(z).describe("an image"),
    doc: z.object({ path: z.string() }).optional(),
  })
  .describe("echo the input");
export const RunOutput = z.object({ text: z.string(), file: z.object({ path: z.string() }) });

export const ShoutInput = z.object({ text: z.string() });
export const ShoutOutput = z.object({ text: z.string() });

export class App {
  async run(input) {
    const image = await File.from(input.image);
    return { text: `${input.text} ${input.mode}`, file: File.fromPath(image.path) };
  }

  async shout(input) {
    return { text: input.text.toUpperCase() };
  }
}
