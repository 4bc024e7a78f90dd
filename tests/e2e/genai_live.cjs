// One Live API text session with Google's JS SDK (@google/genai): connect, send a turn, collect
// the model's text until the turn is complete, close. Prints {"texts": [...], "setup": bool} as JSON.
// Usage: node genai_live.cjs BASE_URL API_KEY MODEL TEXT
const { GoogleGenAI, Modality } = require("@google/genai");

async function main() {
  const [baseUrl, apiKey, model, text] = process.argv.slice(2);
  const ai = new GoogleGenAI({ apiKey, httpOptions: { baseUrl, apiVersion: "v1beta" } });
  const texts = [];
  let done;
  const turnDone = new Promise((resolve, reject) => {
    done = { resolve, reject };
  });
  const session = await ai.live.connect({
    model,
    config: { responseModalities: [Modality.TEXT] },
    callbacks: {
      onmessage: (msg) => {
        if (msg.text) texts.push(msg.text);
        if (msg.serverContent && msg.serverContent.turnComplete) done.resolve();
      },
      onerror: (e) => done.reject(new Error(`live error: ${e && e.message}`)),
      onclose: (e) => done.reject(new Error(`closed early: ${e.code} ${e.reason}`)),
    },
  });
  session.sendClientContent({ turns: [{ role: "user", parts: [{ text }] }], turnComplete: true });
  const timer = setTimeout(() => done.reject(new Error("no complete turn within 20 s")), 20000);
  await turnDone;
  clearTimeout(timer);
  session.close();
  console.log(JSON.stringify({ texts }));
}

main().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});
