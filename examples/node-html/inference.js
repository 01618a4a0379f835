// A Node.js app in the inference.sh shape: Zod schemas in {Name}Input /
// {Name}Output pairs, one method of class App per pair.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { File, createFileSchema } from "@inferencesh/app";
import { z } from "zod";

export const RunInput = z
  .object({
    name: z.string().describe("Who the card is for"),
    color: z.enum(["teal", "tomato", "gold"]).default("teal").describe("Background color"),
    photo: createFileSchema(z).optional().describe("An optional image to embed"),
  })
  .describe("Render a greeting card as an HTML file");
export const RunOutput = z.object({
  card: z.object({ path: z.string() }).describe("The HTML card"),
  words: z.number(),
});

export const ReverseInput = z.object({ text: z.string() }).describe("Reverse a string");
export const ReverseOutput = z.object({ text: z.string() });

export const WordsInput = z.object({ text: z.string() }).describe("Stream the words of a text, one by one");
export const WordsOutput = z.object({ word: z.string(), index: z.number() });

export class App {
  async setup() {
    this.dir = path.join(os.tmpdir(), "node-html");
    fs.mkdirSync(this.dir, { recursive: true });
  }

  async run(input, metadata) {
    let image = "";
    if (input.photo) {
      const photo = await File.from(input.photo);
      const data = fs.readFileSync(await photo.getPath()).toString("base64"); // downloads a URL
      image = `<img src="data:${photo.contentType ?? "image/png"};base64,${data}">`;
    }
    metadata.progress(0.5, "rendering");
    const html = `<!doctype html><body style="background:${input.color}"><h1>Hello, ${escape(input.name)}!</h1>${image}</body>`;
    const out = path.join(this.dir, `card-${Date.now()}.html`);
    fs.writeFileSync(out, html);
    console.log(`wrote ${out}`);
    return { card: File.fromPath(out), words: 2 };
  }

  async reverse(input) {
    return { text: [...input.text].reverse().join("") };
  }

  async *words(input) {
    const words = input.text.split(/\s+/).filter(Boolean);
    for (const [index, word] of words.entries()) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      yield { word, index };
    }
  }

  async unload() {
    console.log("unloading: the cards stay in " + this.dir);
  }
}

function escape(text) {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}
