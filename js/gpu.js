// Running a job's program on this browser's WebGPU: the twin of webnet_magic/worker/gpu.py.
// A program is WGSL kernels, buffers (some filled from the job's arrays), dispatch steps, and
// the buffers to read back.  Each kernel is compiled once per page, keyed by its hash.

import { arrayBytes } from "./protocol.js";

export class JobError extends Error {
  constructor(kind, message, missing = []) {
    super(message);
    this.kind = kind;
    this.missing = missing; // for "missing-inputs": the content keys no longer cached
  }
}

// GPU buffers kept between jobs by content key (webnet_magic/worker/cache.py's twin): the
// notebook does not send again what a worker holds.  Least recently used go first; pinned
// ones (%webnet put) only when freed.  A Map keeps insertion order: re-inserting on use
// makes its first entries the least recently used.
class BufferCache {
  constructor(budget) {
    this.budget = budget;
    this.entries = new Map();
  }

  get used() {
    let total = 0;
    for (const e of this.entries.values()) total += e.nbytes;
    return total;
  }

  get(key) {
    const entry = this.entries.get(key);
    if (!entry) return null;
    this.entries.delete(key);
    this.entries.set(key, entry);
    return entry.buffer;
  }

  keep(key, buffer, nbytes, pin = false, protect = new Set()) {
    const existing = this.entries.get(key);
    if (existing) {
      existing.pinned ||= pin;
      this.get(key); // now the most recently used
      return existing.buffer === buffer;
    }
    let room = this.budget - this.used;
    for (const [k, e] of [...this.entries]) {
      if (room >= nbytes) break;
      if (e.pinned || protect.has(k)) continue;
      room += e.nbytes;
      e.buffer.destroy();
      this.entries.delete(k);
    }
    if (room < nbytes) return false;
    this.entries.set(key, { buffer, nbytes, pinned: pin });
    return true;
  }

  drop(key) {
    const entry = this.entries.get(key);
    if (entry) {
      entry.buffer.destroy();
      this.entries.delete(key);
    }
  }

  owns(buffer) {
    for (const e of this.entries.values()) if (e.buffer === buffer) return true;
    return false;
  }

  held() {
    return [...this.entries.keys()];
  }

  pinned() {
    return [...this.entries].filter(([, e]) => e.pinned).map(([k]) => k);
  }
}

// Limits asked at the adapter's maximum (so large buffers fit) and reported in the hello.
const RAISED = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupsPerDimension",
];
const REPORTED = [
  ...RAISED,
  "maxStorageBuffersPerShaderStage",
  "maxUniformBufferBindingSize",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
];

// Why this page has no WebGPU, in words a person can act on; null when it has.
export function missingWebGPU() {
  if (!window.isSecureContext) {
    return (
      `WebGPU needs a secure page: https, or localhost. This page is ${location.protocol}//${location.host}, ` +
      "so open the link in a browser on the notebook's own machine (or reach it over https)."
    );
  }
  if (!navigator.gpu) {
    return "This browser has no WebGPU. Use Chrome or Edge 113+, or Safari on iOS/macOS 26+.";
  }
  return null;
}

// The adapter and a device with raised limits; throws Error(reason) when there is none.
// `maxBuffer` (bytes) caps the buffer limits this page reports and keeps to (?maxbuffer=MB).
export async function openDevice(onLost, maxBuffer = Infinity) {
  const reason = missingWebGPU();
  if (reason) throw new Error(reason);
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new Error("WebGPU is present but offered no GPU adapter (is the GPU blocklisted?).");
  const requiredLimits = {};
  for (const name of RAISED) requiredLimits[name] = adapter.limits[name];
  const device = await adapter.requestDevice({ requiredLimits });
  device.lost.then((info) => onLost(info.message || info.reason || "device lost"));
  const info = adapter.info || {};
  const limits = {};
  for (const name of REPORTED) limits[name] = device.limits[name];
  for (const name of ["maxStorageBufferBindingSize", "maxBufferSize"]) limits[name] = Math.min(limits[name], maxBuffer);
  return {
    device,
    describe: {
      adapter: {
        vendor: info.vendor || "",
        architecture: info.architecture || "",
        device: info.device || "",
        description: info.description || "",
        backend: "WebGPU",
        type: info.isFallbackAdapter ? "fallback" : "",
      },
      limits,
      features: [...device.features].sort(),
    },
  };
}

const pad4 = (n) => Math.max(4, Math.ceil(n / 4) * 4);

export class Executor {
  constructor(device, cacheBytes = 256 * 1024 * 1024, maxBuffer = Infinity) {
    this.device = device;
    this.maxBuffer = maxBuffer;
    this.pipelines = new Map();
    this.cache = new BufferCache(cacheBytes);
  }

  async pipeline(hash, kernel) {
    if (this.pipelines.has(hash)) return this.pipelines.get(hash);
    const module = this.device.createShaderModule({ code: kernel.source });
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === "error");
    if (errors.length) {
      throw new JobError("compile", errors.map((m) => `line ${m.lineNum}:${m.linePos}: ${m.message}`).join("\n"));
    }
    let pipeline;
    try {
      pipeline = await this.device.createComputePipelineAsync({
        layout: "auto",
        compute: { module, entryPoint: kernel.entry || "main" },
      });
    } catch (e) {
      throw new JobError("compile", e.message);
    }
    this.pipelines.set(hash, pipeline);
    return pipeline;
  }

  // Runs a `job` message; resolves to {outputs: [{dtype, shape, bytes}], timings} (milliseconds).
  async run(message) {
    const { kernels, buffers: specs, steps, outputs } = message.fields;
    const device = this.device;
    const t0 = performance.now();
    for (const [hash, kernel] of Object.entries(kernels)) await this.pipeline(hash, kernel); // compile all first
    const pipelines = [];
    for (const step of steps) {
      if (!(step.kernel in kernels)) throw new JobError("protocol", `step uses unknown kernel ${step.kernel}`);
      pipelines.push(await this.pipeline(step.kernel, kernels[step.kernel]));
    }
    const made = [];
    try {
      // Every WebGPU call below reports errors through these scopes, not exceptions.
      device.pushErrorScope("out-of-memory");
      device.pushErrorScope("validation");
      let staging;
      const t1 = performance.now();
      let t2;
      let t3;
      try {
        const buffers = this.upload(specs, message.arrays, made);
        await device.queue.onSubmittedWorkDone();
        t2 = performance.now();
        const encoder = device.createCommandEncoder();
        const pass = encoder.beginComputePass();
        steps.forEach((step, i) => {
          pass.setPipeline(pipelines[i]);
          const entries = step.bindings.map((b, binding) => ({ binding, resource: { buffer: buffers[b] } }));
          pass.setBindGroup(0, device.createBindGroup({ layout: pipelines[i].getBindGroupLayout(0), entries }));
          pass.dispatchWorkgroups(...step.workgroups);
        });
        pass.end();
        device.queue.submit([encoder.finish()]);
        await device.queue.onSubmittedWorkDone();
        t3 = performance.now();
        const copies = device.createCommandEncoder();
        staging = outputs.map((out) => {
          const nbytes = arrayBytes(out.dtype, out.shape);
          const usage = GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST;
          const buffer = device.createBuffer({ size: pad4(nbytes), usage });
          made.push(buffer);
          copies.copyBufferToBuffer(buffers[out.buffer], 0, buffer, 0, pad4(nbytes));
          return { buffer, nbytes };
        });
        device.queue.submit([copies.finish()]);
      } finally {
        const validation = await device.popErrorScope();
        const memory = await device.popErrorScope();
        if (memory) throw new JobError("out-of-memory", memory.message);
        if (validation) throw new JobError("validation", validation.message);
      }
      await Promise.all(staging.map(({ buffer }) => buffer.mapAsync(GPUMapMode.READ)));
      const results = staging.map(({ buffer, nbytes }, i) => ({
        dtype: outputs[i].dtype,
        shape: outputs[i].shape,
        bytes: new Uint8Array(buffer.getMappedRange()).slice(0, nbytes),
      }));
      const t4 = performance.now();
      return {
        outputs: results,
        timings: { compile: t1 - t0, upload: t2 - t1, kernel: t3 - t2, download: t4 - t3 },
      };
    } finally {
      for (const b of made) if (!this.cache.owns(b)) b.destroy();
    }
  }

  // Each buffer: from the cache (a keyed buffer sent without data), or made and filled.
  upload(specs, inputs, made) {
    const sent = (spec) => spec.input !== null && spec.input !== undefined;
    const missing = specs.filter((s) => s.key && !sent(s) && !this.cache.entries.has(s.key)).map((s) => s.key);
    if (missing.length) throw new JobError("missing-inputs", `${missing.length} input(s) were no longer cached`, missing);
    const inUse = new Set(specs.filter((s) => s.key).map((s) => s.key));
    return specs.map((spec) => {
      if (spec.key && !sent(spec)) return this.cache.get(spec.key);
      const data = sent(spec) ? inputs[spec.input] : null;
      if (sent(spec) && !data) throw new JobError("protocol", `a buffer reads input ${spec.input}, which the job lacks`);
      const buffer = this.buffer(spec.size, spec.uniform, data);
      made.push(buffer);
      if (spec.key && data) this.cache.keep(spec.key, buffer, spec.size, false, inUse);
      return buffer;
    });
  }

  buffer(size, uniform, data) {
    if (size > this.maxBuffer) {
      throw new JobError("out-of-memory", `a ${size}-byte buffer is above this page's limit of ${this.maxBuffer}`);
    }
    const usage = uniform
      ? GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST
      : GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const buffer = this.device.createBuffer({ size, usage });
    if (data && data.bytes.byteLength) this.device.queue.writeBuffer(buffer, 0, padded(data.bytes));
    return buffer;
  }

  // %webnet put: keep an array on the device under its key, pinned; false if it does not fit.
  async store(key, array) {
    const existing = this.cache.get(key);
    if (existing) return this.cache.keep(key, existing, 0, true);
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("validation");
    let buffer = null;
    try {
      buffer = this.buffer(pad4(array.bytes.byteLength), false, array);
    } finally {
      const validation = await this.device.popErrorScope();
      const memory = await this.device.popErrorScope();
      if (validation || memory) {
        buffer?.destroy(); // never keep a buffer that did not fill
        buffer = null;
      }
    }
    if (buffer && this.cache.keep(key, buffer, buffer.size, true)) return true;
    buffer?.destroy();
    return false;
  }
}

function padded(bytes) {
  if (bytes.byteLength % 4 === 0) return bytes;
  const out = new Uint8Array(pad4(bytes.byteLength));
  out.set(bytes);
  return out;
}
