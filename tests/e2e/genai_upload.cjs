// Uploads a file with Google's JS SDK (@google/genai) and prints the created file as JSON.
// Usage: node genai_upload.cjs BASE_URL API_KEY PATH
const { GoogleGenAI } = require("@google/genai");

async function main() {
  const [baseUrl, apiKey, path] = process.argv.slice(2);
  const ai = new GoogleGenAI({ apiKey, httpOptions: { baseUrl, apiVersion: "v1beta" } });
  const file = await ai.files.upload({ file: path, config: { mimeType: "text/plain", displayName: "node" } });
  const again = await ai.files.get({ name: file.name });
  console.log(JSON.stringify({ name: file.name, got: again.name }));
}

main().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});
