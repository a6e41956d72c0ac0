// What the page's own protocol.js makes of the golden frames: for each case, the messages it decodes,
// the frames it encodes, how many frames it accepts and its reason for refusing one (the same outcome
// tests/golden.py reports for webnet_magic.protocol).  An async function of frames.json's contents,
// evaluated in a page the broker served: by Playwright in Chromium, by Selenium in WebKit.
async (golden) => {
  const protocol = await import("/protocol.js");
  const unhex = (text) => new Uint8Array((text.match(/../g) || []).map((b) => parseInt(b, 16)));
  const hex = (bytes) => Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
  const meaning = (m) => ({
    type: m.type,
    fields: m.fields,
    arrays: m.arrays.map((a) => ({ dtype: a.dtype, shape: a.shape, hex: hex(a.bytes) })),
  });
  const failure = (e) => (e instanceof protocol.ProtocolError ? { refused: e.message } : { crashed: `${e.name}: ${e.message}` });
  const outcomes = {};
  for (const c of [...golden.good, ...golden.bad]) {
    const out = { messages: [], accepted: 0 };
    const assembler = "budget" in c ? new protocol.Assembler(() => c.budget) : new protocol.Assembler();
    try {
      for (const frame of c.frames) {
        const message = assembler.feed(unhex(frame).buffer);
        out.accepted += 1;
        if (message) out.messages.push(meaning(message));
      }
    } catch (e) {
      Object.assign(out, failure(e));
    }
    if (c.encode) {
      const m = c.messages[0];
      const arrays = m.arrays.map((a) => ({ dtype: a.dtype, shape: a.shape, bytes: unhex(a.hex) }));
      try {
        out.encoded = [...protocol.encode({ type: m.type, fields: m.fields, arrays }, c.encode.id, c.encode.chunk)].map(hex);
      } catch (e) {
        out.crashed = `encode: ${failure(e).refused || failure(e).crashed}`;
      }
    }
    outcomes[c.name] = out;
  }
  return outcomes;
}
