// The wire format between broker and workers: the browser twin of webnet_magic/protocol.py.
// Pure functions on ArrayBuffers, no I/O.  Keep the two in step.
//
//   HEAD  "WN" | u8 version | u8 kind=0 | u32 message id | u32 json length | json | payload part
//   DATA  "WN" | u8 version | u8 kind=1 | u32 message id | payload part
//
// An array is {dtype, shape, bytes: Uint8Array}; the payload is the arrays' bytes back to back.

export const VERSION = 1;
export const DEFAULT_CHUNK = 4 * 1024 * 1024;
export const CLOSE = { GOING_AWAY: 1001, PROTOCOL: 1002, BAD_TOKEN: 4003, SILENT: 4008 };

const HEAD = 0;
const DATA = 1;
const PREFIX = 8;
const ITEMSIZE = { float32: 4, int32: 4, uint32: 4, float16: 2, uint8: 1 };

// Fields each message type must carry (as in SCHEMA in protocol.py).
const SCHEMA = {
  hello: { runtime: "string", name: "string", webgpu: "boolean", adapter: "object", limits: "object" },
  result: { job: "string", timings: "object" },
  error: { job: "string", kind: "string", message: "string" },
  pong: { t: "number" },
  cache: { key: "string", held: "object", pinned: "object" },
  welcome: { device: "string", heartbeat: "number" },
  job: { job: "string", kernels: "object", buffers: "object", steps: "object", outputs: "object" },
  cancel: { job: "string" },
  ping: { t: "number" },
  put: { key: "string", pin: "boolean" },
  free: { key: "string" },
};

export class ProtocolError extends Error {}

export function validateFields(type, fields) {
  const schema = SCHEMA[type];
  if (!schema) throw new ProtocolError(`unknown message type ${type}`);
  for (const [name, kind] of Object.entries(schema)) {
    if (!(name in fields)) throw new ProtocolError(`'${type}' message is missing field '${name}'`);
    if (typeof fields[name] !== kind || fields[name] === null) {
      throw new ProtocolError(`'${type}' message field '${name}' has the wrong type`);
    }
  }
}

export function arrayBytes(dtype, shape) {
  if (!(dtype in ITEMSIZE)) throw new ProtocolError(`dtype ${dtype} cannot cross the wire`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new ProtocolError(`array shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  return shape.reduce((a, b) => a * b, 1) * ITEMSIZE[dtype];
}

// The frames (ArrayBuffers) that carry one message, made one at a time as they are sent
// (a phone's tab must not hold a large result twice); send them in order.
export function encode(message, id, chunkSize = DEFAULT_CHUNK) {
  validateFields(message.type, message.fields);
  const arrays = message.arrays || [];
  const head = new TextEncoder().encode(
    JSON.stringify({
      type: message.type,
      fields: message.fields,
      arrays: arrays.map((a) => ({ dtype: a.dtype, shape: a.shape })),
    }),
  );
  for (const a of arrays) {
    if (arrayBytes(a.dtype, a.shape) !== a.bytes.byteLength) {
      throw new ProtocolError(`array of ${a.bytes.byteLength} bytes does not match ${a.dtype}${JSON.stringify(a.shape)}`);
    }
  }
  return frames(head, arrays, id, chunkSize);
}

function* frames(head, arrays, id, chunkSize) {
  const total = arrays.reduce((n, a) => n + a.bytes.byteLength, 0);
  let arrayIndex = 0;
  let arrayOffset = 0;
  let sent = 0;
  // Fill `target` from the arrays' bytes, continuing where the previous frame stopped
  // (an empty array is stepped over: its offset 0 is already its end).
  const fill = (target) => {
    let at = 0;
    while (at < target.length) {
      const src = arrays[arrayIndex].bytes;
      const take = Math.min(target.length - at, src.byteLength - arrayOffset);
      target.set(src.subarray(arrayOffset, arrayOffset + take), at);
      at += take;
      arrayOffset += take;
      if (arrayOffset === src.byteLength) {
        arrayIndex += 1;
        arrayOffset = 0;
      }
    }
    sent += target.length;
  };
  const first = Math.min(chunkSize, total);
  const headFrame = new Uint8Array(PREFIX + 4 + head.length + first);
  writePrefix(headFrame, HEAD, id);
  new DataView(headFrame.buffer).setUint32(PREFIX, head.length, true);
  headFrame.set(head, PREFIX + 4);
  fill(headFrame.subarray(PREFIX + 4 + head.length));
  yield headFrame.buffer;
  while (sent < total) {
    const size = Math.min(chunkSize, total - sent);
    const frame = new Uint8Array(PREFIX + size);
    writePrefix(frame, DATA, id);
    fill(frame.subarray(PREFIX));
    yield frame.buffer;
  }
}

function writePrefix(frame, kind, id) {
  frame[0] = 0x57; // W
  frame[1] = 0x4e; // N
  frame[2] = VERSION;
  frame[3] = kind;
  new DataView(frame.buffer).setUint32(4, id >>> 0, true);
}

// Turns incoming frames back into messages; every declared size is checked first.
export class Assembler {
  constructor(maxMessageBytes = 2 ** 31, maxPending = 8) {
    this.maxMessageBytes = maxMessageBytes;
    this.maxPending = maxPending;
    this.pending = new Map();
  }

  feed(buffer) {
    const frame = new Uint8Array(buffer);
    if (frame.length < PREFIX) throw new ProtocolError(`frame of ${frame.length} bytes is too short`);
    if (frame[0] !== 0x57 || frame[1] !== 0x4e) throw new ProtocolError("frame does not start with 'WN'");
    if (frame[2] !== VERSION) {
      throw new ProtocolError(`protocol version ${frame[2]}, this page speaks ${VERSION}; reload the page`);
    }
    const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
    const id = view.getUint32(4, true);
    let partial;
    let data;
    if (frame[3] === HEAD) {
      [partial, data] = this.start(id, frame, view);
    } else if (frame[3] === DATA) {
      partial = this.pending.get(id);
      if (!partial) throw new ProtocolError(`data frame for unknown message ${id}`);
      data = frame.subarray(PREFIX);
    } else {
      throw new ProtocolError(`unknown frame kind ${frame[3]}`);
    }
    if (partial.filled + data.length > partial.payload.length) {
      throw new ProtocolError(`message ${id} carries more bytes than its header declared`);
    }
    partial.payload.set(data, partial.filled);
    partial.filled += data.length;
    if (partial.filled < partial.payload.length) return null;
    this.pending.delete(id);
    let offset = 0;
    const arrays = partial.specs.map(({ dtype, shape, nbytes }) => {
      const bytes = partial.payload.subarray(offset, offset + nbytes);
      offset += nbytes;
      return { dtype, shape, bytes };
    });
    return { type: partial.type, fields: partial.fields, arrays };
  }

  start(id, frame, view) {
    if (this.pending.has(id)) throw new ProtocolError(`message ${id} started twice`);
    if (this.pending.size >= this.maxPending) throw new ProtocolError("too many messages in flight");
    if (frame.length < PREFIX + 4) throw new ProtocolError("head frame too short");
    const jsonLength = view.getUint32(PREFIX, true);
    if (PREFIX + 4 + jsonLength > frame.length) throw new ProtocolError("head frame shorter than its header");
    let head;
    try {
      head = JSON.parse(new TextDecoder().decode(frame.subarray(PREFIX + 4, PREFIX + 4 + jsonLength)));
    } catch (e) {
      throw new ProtocolError(`message header is not valid JSON: ${e.message}`);
    }
    if (typeof head !== "object" || head === null || typeof head.type !== "string") {
      throw new ProtocolError("message header must be an object with a string 'type'");
    }
    const fields = head.fields || {};
    validateFields(head.type, fields);
    const specs = (head.arrays || []).map((s) => ({ ...s, nbytes: arrayBytes(s.dtype, s.shape) }));
    const total = specs.reduce((n, s) => n + s.nbytes, 0);
    if (total > this.maxMessageBytes) throw new ProtocolError(`message of ${total} bytes is over the limit`);
    const partial = { type: head.type, fields, specs, payload: new Uint8Array(total), filled: 0 };
    this.pending.set(id, partial);
    return [partial, frame.subarray(PREFIX + 4 + jsonLength)];
  }
}
