// The official `openai` Node SDK against Karta's adapters (run by tests/adapters.rs with
// NODE_PATH pointing at the pinned install). Environment: KARTA_URL, KARTA_KEY, KARTA_PROJECT.
const OpenAI = require("openai");

async function main() {
  const client = new OpenAI({
    baseURL: `${process.env.KARTA_URL}/v1/projects/${process.env.KARTA_PROJECT}`,
    apiKey: process.env.KARTA_KEY,
    maxRetries: 0,
  });
  const stream = await client.chat.completions.create({
    model: "default",
    stream: true,
    messages: [{ role: "user", content: "node ping" }],
  });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  if (!text.includes("node ping")) throw new Error(`streamed chat: ${JSON.stringify(text)}`);

  const resp = await client.responses.create({ model: "default", input: "node pong" });
  if (!resp.output_text.includes("node pong")) throw new Error(`responses: ${JSON.stringify(resp)}`);
  if (resp.status !== "completed") throw new Error(`status ${resp.status}`);
  console.log("ok");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
