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

// Keeping the GPU at full clock while work is on its way (webnet_magic/worker/warm.py's twin): a
// GPU raises its clock only after a while of back-to-back work, so while a job's data arrives the
// page dispatches a cheap kernel (one workgroup spinning, about a millisecond each), never while a
// job's own kernels run, and stops when nothing arrives or waits: an idle phone keeps its battery.
export const LEAD_MS = 600; // warm this long before a job's data is due (warm.py's LEAD: the H200 needed ~0.5 s)
const SPIN_MS = 1;

// When the job data still arriving should be complete, from the rate it has been coming at
// (the twin of warm.py's Arrival; milliseconds).
export class Arrival {
  constructor() {
    this.rate = null; // bytes per ms, of the last arrival measured
    this.due = 0;
    this.since = null;
    this.bytes = 0;
  }

  frame(nbytes, now, remaining) {
    if (this.since === null) {
      this.since = now;
      this.bytes = 0;
    } else {
      this.bytes += nbytes;
      if (now > this.since) this.rate = this.bytes / (now - this.since);
    }
    this.due = now + (this.rate ? remaining / this.rate : 0);
    if (!remaining) this.since = null;
  }

  warmIn(now) {
    return this.due - LEAD_MS - now;
  }
}

export class Executor {
  constructor(device, cacheBytes = 256 * 1024 * 1024, maxBuffer = Infinity) {
    this.device = device;
    this.maxBuffer = maxBuffer;
    this.pipelines = new Map();
    this.cache = new BufferCache(cacheBytes);
    this.armed = false; // warm: a job's data is arriving or jobs wait
    this.running = 0; // jobs whose GPU work is under way (no warming then)
    this.spinning = false;
    this.spinner = null;
    this.rounds = 4096; // adjusted so a warming dispatch lasts about SPIN_MS
    this.warmDispatches = 0;
  }

  warm(on) {
    this.armed = on;
    if (on) this.spin();
  }

  async spin() {
    if (this.spinning) return;
    this.spinning = true;
    try {
      if (!this.spinner) {
        const code = await (await fetch(new URL("spin.wgsl", import.meta.url))).text(); // warm.py's too
        const module = this.device.createShaderModule({ code });
        const pipeline = await this.device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main" } });
        const sink = this.device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
        const rounds = this.device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
        const entries = [{ binding: 0, resource: { buffer: sink } }, { binding: 1, resource: { buffer: rounds } }];
        this.spinner = { pipeline, rounds, group: this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries }) };
      }
      const queue = this.device.queue;
      while (this.armed && !this.running) {
        const t0 = performance.now();
        queue.writeBuffer(this.spinner.rounds, 0, new Uint32Array([this.rounds, 0, 0, 0]));
        const spins = this.device.createCommandEncoder();
        const pass = spins.beginComputePass();
        pass.setPipeline(this.spinner.pipeline);
        pass.setBindGroup(0, this.spinner.group);
        pass.dispatchWorkgroups(1);
        pass.end();
        queue.submit([spins.finish()]);
        await queue.onSubmittedWorkDone();
        this.warmDispatches += 1;
        const ms = performance.now() - t0;
        if (ms > 0) this.rounds = Math.round(Math.min(Math.max(this.rounds * Math.min(Math.max(SPIN_MS / ms, 0.25), 4), 256), 2 ** 24));
      }
    } finally {
      this.spinning = false;
    }
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
    this.running += 1; // warming waits while a job's own work runs
    try {
      return await this.runJob(message);
    } finally {
      this.running -= 1;
      if (this.armed) this.spin();
    }
  }

  async runJob(message) {
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
