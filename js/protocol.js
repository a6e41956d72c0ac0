// The wire format between broker and workers: the browser twin of webnet_magic/protocol.py.
// Pure functions on ArrayBuffers, no I/O.  Every constant comes from protocol.json, the one
// definition both sides load; tests/golden_frames holds frames both must read and write alike.
//
//   HEAD  "WN" | u8 version | u8 kind=0 | u32 message id | u32 json length | json | payload part
//   DATA  "WN" | u8 version | u8 kind=1 | u32 message id | payload part
//
// An array is {dtype, shape, bytes: Uint8Array}; the payload is the arrays' bytes back to back.

import SPEC from "./protocol.json" with { type: "json" };

export { SPEC };
export const VERSION = SPEC.version;
export const DEFAULT_CHUNK = SPEC.defaultChunk;
export const MAX_CHUNK = SPEC.maxChunk;
export const MAX_HEAD_JSON = SPEC.maxHeadJson;
export const MAX_FRAME = SPEC.maxFrame;
export const MAX_MESSAGE_BYTES = SPEC.maxMessageBytes;
export const MAX_RANK = SPEC.maxRank;
export const CLOSE = Object.freeze({ ...SPEC.close });

const { HEAD, DATA } = SPEC.frameKinds;
const MAGIC = [...SPEC.magic].map((c) => c.charCodeAt(0));
const PREFIX = 8; // magic, version, kind, message id
const LENGTH = 4; // a head frame's json length

export class ProtocolError extends Error {}

const has = (object, key) => Object.prototype.hasOwnProperty.call(object, key);
const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
const JSON_TYPES = {
  string: (v) => typeof v === "string",
  boolean: (v) => typeof v === "boolean",
  number: (v) => typeof v === "number",
  object: isObject,
  array: Array.isArray,
};

// Check a message's fields against the spec's messages, naming the first problem.
export function validateFields(type, fields) {
  if (typeof type !== "string" || !has(SPEC.messages, type)) {
    throw new ProtocolError(`unknown message type ${JSON.stringify(type)}`);
  }
  for (const [name, kind] of Object.entries(SPEC.messages[type])) {
    if (!has(fields, name)) throw new ProtocolError(`'${type}' message is missing field '${name}'`);
    if (!JSON_TYPES[kind](fields[name])) throw new ProtocolError(`'${type}' message field '${name}' has the wrong type`);
  }
}

// Bytes of an array of `dtype` and `shape` as a peer described it: at most maxRank dimensions,
// each an integer in [0, maxMessageBytes], and at most maxMessageBytes in all (no overflow).
export function arrayBytes(dtype, shape) {
  if (typeof dtype !== "string" || !has(SPEC.dtypes, dtype)) {
    throw new ProtocolError(`dtype ${JSON.stringify(dtype)} cannot cross the wire`);
  }
  // A dimension too large for a double reads as Infinity: over the cap below, as in Python.
  if (!Array.isArray(shape) || !shape.every((d) => (Number.isInteger(d) || d === Infinity) && d >= 0)) {
    const text = String(JSON.stringify(shape)).slice(0, 100);
    throw new ProtocolError(`array shape ${text} is not a list of non-negative integers`);
  }
  if (shape.length > MAX_RANK) {
    throw new ProtocolError(`array shape has ${shape.length} dimensions; at most ${MAX_RANK} are allowed`);
  }
  if (shape.some((d) => d > MAX_MESSAGE_BYTES)) {
    throw new ProtocolError(`array shape has a dimension over ${MAX_MESSAGE_BYTES}`);
  }
  const text = JSON.stringify(shape);
  if (shape.includes(0)) return 0;
  let nbytes = SPEC.dtypes[dtype];
  for (const d of shape) {
    nbytes *= d; // below 2**62 before the check: each factor is at most 2**31
    if (nbytes > MAX_MESSAGE_BYTES) {
      throw new ProtocolError(`a ${dtype} array of shape ${text} holds more than ${MAX_MESSAGE_BYTES} bytes`);
    }
  }
  return nbytes;
}

// The frames (ArrayBuffers) that carry one message, made one at a time as they are sent
// (a phone's tab must not hold a large result twice); send them in order.
export function encode(message, id, chunkSize = DEFAULT_CHUNK) {
  if (!(Number.isInteger(chunkSize) && chunkSize > 0 && chunkSize <= MAX_CHUNK)) {
    throw new RangeError(`chunkSize must be between 1 and ${MAX_CHUNK}`);
  }
  validateFields(message.type, message.fields);
  const arrays = message.arrays || [];
  for (const a of arrays) {
    if (arrayBytes(a.dtype, a.shape) !== a.bytes.byteLength) {
      throw new ProtocolError(`array of ${a.bytes.byteLength} bytes does not match ${a.dtype}${JSON.stringify(a.shape)}`);
    }
  }
  const head = new TextEncoder().encode(
    JSON.stringify({
      type: message.type,
      fields: message.fields,
      arrays: arrays.map((a) => ({ dtype: a.dtype, shape: a.shape })),
    }),
  );
  if (head.length > MAX_HEAD_JSON) {
    throw new ProtocolError(`message header of ${head.length} bytes is over the ${MAX_HEAD_JSON}-byte limit`);
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
  const headFrame = new Uint8Array(PREFIX + LENGTH + head.length + first);
  writePrefix(headFrame, HEAD, id);
  new DataView(headFrame.buffer).setUint32(PREFIX, head.length, true);
  headFrame.set(head, PREFIX + LENGTH);
  fill(headFrame.subarray(PREFIX + LENGTH + head.length));
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
  frame.set(MAGIC);
  frame[2] = VERSION;
  frame[3] = kind;
  new DataView(frame.buffer).setUint32(4, id >>> 0, true);
}

// The header's JSON: strict UTF-8, a byte-order mark kept (so JSON.parse refuses it, as Python does).
function parseHeader(bytes) {
  return JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes));
}

// Turns incoming frames back into messages, one connection's worth.  Every size a peer declares
// is checked against `budget(type, fields)` before memory is set aside for it.
export class Assembler {
  constructor(budget = () => MAX_MESSAGE_BYTES, maxPending = SPEC.maxPending) {
    this.budget = budget;
    this.maxPending = maxPending;
    this.pending = new Map();
  }

  // Bytes still to come of the messages of `type` whose head has arrived (the page warms its GPU
  // as a job's data comes in).
  arriving(type) {
    let left = 0;
    for (const p of this.pending.values()) if (p.type === type) left += p.payload.length - p.filled;
    return left;
  }

  feed(buffer) {
    const frame = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
    if (frame.length < PREFIX) {
      throw new ProtocolError(`frame of ${frame.length} bytes is shorter than the ${PREFIX}-byte prefix`);
    }
    if (frame.length > MAX_FRAME) {
      throw new ProtocolError(`frame of ${frame.length} bytes is over the ${MAX_FRAME}-byte limit`);
    }
    if (frame[0] !== MAGIC[0] || frame[1] !== MAGIC[1]) {
      throw new ProtocolError(`frame does not start with '${SPEC.magic}'; is this a webnet broker?`);
    }
    if (frame[2] !== VERSION) {
      throw new ProtocolError(`protocol version ${frame[2]}, this side speaks ${VERSION}; reload the page`);
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
      throw new ProtocolError(`message ${id} carries more than the ${partial.payload.length} bytes its header declared`);
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
    if (this.pending.size >= this.maxPending) {
      throw new ProtocolError(`more than ${this.maxPending} messages in flight at once`);
    }
    if (frame.length < PREFIX + LENGTH) throw new ProtocolError("head frame is too short to hold its header length");
    const jsonLength = view.getUint32(PREFIX, true);
    if (jsonLength > MAX_HEAD_JSON) {
      throw new ProtocolError(`message header of ${jsonLength} bytes is over the ${MAX_HEAD_JSON}-byte limit`);
    }
    if (PREFIX + LENGTH + jsonLength > frame.length) {
      throw new ProtocolError(`head frame declares a ${jsonLength}-byte header it does not hold`);
    }
    let head;
    try {
      head = parseHeader(frame.subarray(PREFIX + LENGTH, PREFIX + LENGTH + jsonLength));
    } catch (e) {
      throw new ProtocolError(`message header is not valid JSON: ${String(e.message).slice(0, 200)}`);
    }
    if (!isObject(head) || typeof head.type !== "string") {
      throw new ProtocolError("message header must be an object with a string 'type'");
    }
    const fields = has(head, "fields") ? head.fields : {};
    const declared = has(head, "arrays") ? head.arrays : [];
    if (!isObject(fields) || !Array.isArray(declared)) {
      throw new ProtocolError("message header 'fields' must be an object and 'arrays' a list");
    }
    validateFields(head.type, fields);
    const specs = declared.map((s) => {
      if (!isObject(s)) throw new ProtocolError("each entry of 'arrays' must be an object");
      return { dtype: s.dtype, shape: s.shape, nbytes: arrayBytes(s.dtype, s.shape) };
    });
    const total = specs.reduce((n, s) => n + s.nbytes, 0);
    const allowed = this.budget(head.type, fields);
    if (total > allowed) {
      throw new ProtocolError(`'${head.type}' message of ${total} bytes; at most ${allowed} were expected`);
    }
    const partial = { type: head.type, fields, specs, payload: new Uint8Array(total), filled: 0 };
    this.pending.set(id, partial);
    return [partial, frame.subarray(PREFIX + LENGTH + jsonLength)];
  }
}
