// Streams one answer with Google's JS SDK (@google/genai) and prints its chunks' texts as JSON.
// Usage: node genai_stream.cjs BASE_URL MODEL HEADERS_JSON
const { GoogleGenAI } = require("@google/genai");

async function main() {
  const [baseUrl, model, headers] = process.argv.slice(2);
  const ai = new GoogleGenAI({
    apiKey: "client-token",
    httpOptions: { baseUrl, apiVersion: "v1beta", headers: JSON.parse(headers) },
  });
  const texts = [];
  for await (const chunk of await ai.models.generateContentStream({ model, contents: "Count to three." })) {
    texts.push(chunk.text ?? "");
  }
  console.log(JSON.stringify(texts));
}

main().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});
