// Decodes Sparkplug B payloads with Eclipse Tahu's JavaScript decoder (npm sparkplug-payload),
// for tests/test_sparkplug.py: stdin is [{"topic", "payload": base64}, ...]; stdout is the
// same list with each payload decoded ({"timestamp", "seq", "metrics": [{name, type,
// value, ...}]}), or {"error": "..."} for one that does not decode. Long values (Int64,
// UInt64, timestamps) become numbers: every one the gateway sends fits in 2^53.
// `node decode.js --encode`: stdin is [payload object, ...] (Tahu's shape: {"timestamp",
// "metrics": [{"name", "type", "value"}]}); stdout is the list of base64 encodings (the
// commands the test sends, encoded by Tahu rather than by the code under test).
"use strict";
const { get } = require("sparkplug-payload");
const Long = require("long");

const decoder = get("spBv1.0");

function plain(value) {
  if (Long.isLong(value)) return value.toNumber();
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === "object" && !(value instanceof Uint8Array)) {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = plain(v);
    return out;
  }
  return value;
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  if (process.argv.includes("--encode")) {
    const encoded = JSON.parse(input).map((p) => Buffer.from(decoder.encodePayload(p)));
    process.stdout.write(JSON.stringify(encoded.map((b) => b.toString("base64"))));
    return;
  }
  const out = JSON.parse(input).map(({ topic, payload }) => {
    try {
      return { topic, payload: plain(decoder.decodePayload(Buffer.from(payload, "base64"))) };
    } catch (err) {
      return { topic, error: String(err) };
    }
  });
  process.stdout.write(JSON.stringify(out));
});
