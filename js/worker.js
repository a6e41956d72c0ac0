// The worker page: joins this browser's WebGPU to the notebook's broker and runs its jobs.
//
// The socket URL is built from the page's own location (same origin, so a tunnel that served
// the page serves the socket too).  The page keeps the screen awake while connected, answers
// heartbeats while a job runs, and reconnects with backoff when the link drops; it stops
// for good only when the notebook stops the broker or refuses the token.
//
// The notebook may send the next jobs before this one is done (pipelining): the next job's
// data arrives while this one computes, and this one's result goes back while the next
// computes.  Jobs run one at a time, in the order they came; answers leave in that order
// too.  A job cancelled while it waits is answered at once and never runs.

import { Assembler, CLOSE, encode, ProtocolError } from "./protocol.js";
import { Arrival, Executor, JobError, missingWebGPU, openDevice } from "./gpu.js";

const $ = (id) => document.getElementById(id);
const state = {
  status: "starting",
  detail: "",
  deviceId: null,
  adapter: "",
  jobsDone: 0,
  lastJobMs: null,
  job: null,
  trail: [], // the last statuses shown, oldest first (for tests: a job's phases pass quickly)
};

const HIGH_WATER = 8 * 1024 * 1024; // bytes queued on the socket before send() waits
const TONES = { idle: "ok", running: "busy", starting: "wait", connecting: "wait", reconnecting: "wait", "device lost": "wait" };
// What the person holding the device reads for each status (window.webnet.status keeps the short name).
const HEADLINES = {
  starting: "Starting", connecting: "Connecting", idle: "Ready", running: "Working", reconnecting: "Reconnecting",
  refused: "Link refused", "session ended": "All done", "no WebGPU": "Cannot help", "device lost": "GPU restarting",
  "no token": "Incomplete link", "GPU gone": "GPU stopped",
};
// Where this page can no longer help, asking to keep it open (and the screen on) would only drain a battery.
const OVER = new Set(["refused", "session ended", "no WebGPU", "no token", "GPU gone"]);

// What the page shows (and what tests read from window.webnet).
function show(status, detail = "") {
  state.status = status;
  state.detail = detail;
  $("status").textContent = HEADLINES[status] || status;
  $("status").dataset.tone = TONES[status] || "bad";
  $("detail").textContent = detail || (status === "idle" ? "Connected. Waiting for work from the notebook." : "");
  $("hint").hidden = OVER.has(status);
  state.trail = [...state.trail.slice(-19), detail ? `${status}: ${detail}` : status];
  $("device").textContent = [state.deviceId, state.adapter].filter(Boolean).join(" · ");
  $("jobs").textContent = `${state.jobsDone} job${state.jobsDone === 1 ? "" : "s"} done`;
  $("last").textContent = state.lastJobMs === null ? "" : `last job ${state.lastJobMs.toFixed(1)} ms on the GPU`;
}
window.webnet = state;

// "phone", "tablet" or "computer": how the page speaks of the device it runs on.
function deviceKind() {
  const ua = navigator.userAgent;
  return /iPad|Tablet|Android(?!.*Mobile)/.test(ua) ? "tablet" : /iPhone|Android|Mobile/.test(ua) ? "phone" : "computer";
}

function browserName() {
  const ua = navigator.userAgent;
  const browser = /Edg\//.test(ua) ? "Edge" : /Chrome\//.test(ua) ? "Chrome" : /Safari\//.test(ua) ? "Safari" : /Firefox\//.test(ua) ? "Firefox" : "Browser";
  const os = /iPhone|iPad/.test(ua) ? "iOS" : /Android/.test(ua) ? "Android" : /Mac OS X/.test(ua) ? "macOS" : /Windows/.test(ua) ? "Windows" : /Linux/.test(ua) ? "Linux" : "";
  return os ? `${browser} on ${os}` : browser;
}

// How the notebook's panel names this device: ?name= in the link (e.g. "Ana's iPhone"), else the browser.
function pageName() {
  const name = new URLSearchParams(location.search).get("name");
  return name ? name.slice(0, 120) : browserName();
}

// A size given in the link in MB (?cache=64, ?maxbuffer=100), in bytes; `fallback` MB otherwise.
function megabytes(name, fallback) {
  const text = new URLSearchParams(location.search).get(name);
  const mb = text === null ? fallback : Number(text);
  return (Number.isFinite(mb) && mb >= 0 ? mb : fallback) * 1024 * 1024;
}

// GPU memory for arrays reused across jobs: 256 MB unless the link says (phones are tight).
function cacheBytes() {
  return megabytes("cache", 256);
}

// How many jobs this page holds at once, if the link says (?depth=1: one at a time); else the notebook decides.
function depthLimit() {
  const depth = Number(new URLSearchParams(location.search).get("depth"));
  return Number.isInteger(depth) && depth >= 1 ? { maxJobsHeld: depth } : {};
}

// Whether to keep the GPU busy while a job's data arrives (?warm=0 turns it off, for comparisons).
function warming() {
  return new URLSearchParams(location.search).get("warm") !== "0";
}

function adapterName(a) {
  return a.description || [a.vendor, a.architecture, a.device].filter(Boolean).join(" ") || "WebGPU";
}

class Worker {
  constructor(token) {
    this.token = token;
    this.gpu = null;
    this.executor = null;
    this.noGpu = "";
    this.recovery = null; // after a GPU loss, until the new device is ready: true once it is, false if none came
    this.losing = ""; // what the page says while it gets a new device
    this.gone = ""; // what it says once none came
    this.socket = null;
    this.backoff = 250;
    this.stopped = false;
    this.ids = 1;
    this.queue = Promise.resolve(); // jobs, puts and frees, one at a time
    this.outbox = Promise.resolve(); // results, one at a time, while the next job runs
    this.waiting = new Map(); // jobs here and not started -> jobs ahead of each when it came
    this.inHand = 0; // jobs here whose compute has not finished
    this.sending = 0; // results not yet sent
    this.cancelled = new Set(); // cancels heard for jobs that are running, or not yet here
    this.lastHeard = performance.now();
    this.silenceLimit = 30000;
    this.wakeLock = null;
    this.resume = ""; // the broker's secret for coming back as the same device after a drop
    this.arrival = new Arrival();
    this.warmTimer = null;
    this.warmedAt = 0; // the executor's warming dispatches when the last job ended
  }

  // Warm the GPU while jobs wait here, or from LEAD_MS before a job's data is due; else stop.
  rewarm() {
    clearTimeout(this.warmTimer);
    if (!this.executor) return;
    const on = warming();
    const arriving = this.assembler && this.socket ? this.assembler.arriving("job") : 0;
    const wait = this.arrival.warmIn(performance.now());
    this.executor.warm(on && (this.inHand > 0 || (arriving > 0 && wait <= 0)));
    if (on && arriving && wait > 0 && !this.inHand) this.warmTimer = setTimeout(() => this.rewarm(), wait);
  }

  async start() {
    try {
      this.gpu = await openDevice((why) => this.deviceLost(why), megabytes("maxbuffer", Infinity));
      this.executor = new Executor(this.gpu.device, cacheBytes(), megabytes("maxbuffer", Infinity));
      state.adapter = adapterName(this.gpu.describe.adapter);
    } catch (e) {
      this.noGpu = e.message;
    }
    document.addEventListener("visibilitychange", () => this.visible());
    setInterval(() => this.watch(), 1000);
    this.connect();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/ws?token=${encodeURIComponent(this.token)}`;
    show("connecting", this.noGpu);
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    this.assembler = new Assembler();
    this.waiting = new Map(); // jobs of an earlier link are the notebook's to run again
    this.inHand = 0;
    socket.onopen = () => {
      this.backoff = 250;
      this.lastHeard = performance.now();
      const found = this.gpu ? this.gpu.describe : { adapter: {}, limits: {}, features: [] };
      // maxCachedBytes: what this page keeps across jobs (a model's weights), for placing model stages
      const describe = { ...found, limits: { ...found.limits, ...depthLimit(), maxCachedBytes: cacheBytes() } };
      this.send({
        type: "hello",
        fields: { runtime: "browser", name: pageName(), webgpu: !!this.gpu, reason: this.noGpu, resume: this.resume, ...describe },
      });
      this.keepAwake();
    };
    socket.onmessage = (event) => {
      this.lastHeard = performance.now();
      try {
        if (typeof event.data === "string") throw new ProtocolError("the broker sent a text frame");
        const before = this.assembler.arriving("job");
        const message = this.assembler.feed(event.data);
        const left = this.assembler.arriving("job");
        if (message) this.handle(message);
        if (before || left || (message && message.type === "job")) {
          this.arrival.frame(event.data.byteLength, performance.now(), left);
          this.rewarm();
        }
      } catch (e) {
        socket.close(CLOSE.PROTOCOL, String(e.message).slice(0, 120));
      }
    };
    socket.onclose = (event) => this.closed(socket, event);
  }

  closed(socket, event) {
    if (socket !== this.socket) return;
    this.socket = null;
    state.deviceId = null;
    this.rewarm(); // nothing arrives on a closed link
    if (event.code === CLOSE.BAD_TOKEN) {
      this.stopped = true;
      show("refused", "This link is out of date: the notebook no longer accepts it. Open the current link (%webnet url in the notebook).");
    } else if (event.code === CLOSE.GOING_AWAY) {
      this.stopped = true;
      show("session ended", "The notebook stopped using this device; you can close this page. To help again: %webnet start in the notebook, then open its new link.");
    } else {
      const wait = this.backoff * (0.8 + 0.4 * Math.random());
      this.backoff = Math.min(this.backoff * 2, 10000);
      show("reconnecting", `Lost the connection to the notebook (${event.code}${event.reason ? ": " + event.reason : ""}); trying again in ${(wait / 1000).toFixed(1)} s.`);
      this.retry = setTimeout(() => this.connect(), wait);
    }
  }

  handle(message) {
    const f = message.fields;
    if (message.type === "welcome") {
      state.deviceId = f.device;
      this.resume = typeof f.resume === "string" ? f.resume : "";
      this.silenceLimit = 1000 * f.silence; // the broker says how long it may be silent
      this.settle();
    } else if (message.type === "ping") {
      // A pong echoes its ping, arrays included: the notebook measures the link with it.
      this.send({ type: "pong", fields: f, arrays: message.arrays });
    } else if (message.type === "job" || message.type === "put" || message.type === "free") {
      const socket = this.socket; // in order: a put is done before the job that uses it
      const arrived = performance.now();
      if (message.type === "job") this.waiting.set(f.job, this.inHand++);
      // A step that throws must not stop the ones after it (a rejected chain would skip them all).
      this.queue = this.queue.then(() => this.work(message, socket, arrived)).catch((e) => console.error("webnet:", e));
    } else if (message.type === "cancel") {
      if (this.waiting.delete(f.job)) {
        this.inHand -= 1; // not started: answered now, skipped when its turn comes
        this.rewarm();
        this.fail(f.job, "cancelled", "cancelled before it started");
      } else {
        this.cancelled.add(f.job);
      }
    }
  }

  async work(message, socket, arrived) {
    if (message.type === "job") return this.runJob(message, socket, arrived);
    const key = message.fields.key;
    try {
      if (!this.executor) return;
      if (message.type === "put") await this.executor.store(key, message.arrays[0]);
      else this.executor.cache.drop(key);
    } finally {
      // The answer to this put or free, even when it failed: the listing says what is held.
      const cache = this.executor?.cache;
      await this.send({ type: "cache", fields: { key, held: cache ? cache.held() : [], pinned: cache ? cache.pinned() : [] } });
    }
  }

  async runJob(message, socket, arrived) {
    const job = message.fields.job;
    if (socket !== this.socket) return; // it came on a link that has dropped; the notebook failed it
    if (!this.waiting.has(job)) return; // cancelled while it waited, and answered then
    const ahead = this.waiting.get(job);
    this.waiting.delete(job);
    try {
      if (this.cancelled.delete(job)) return this.fail(job, "cancelled", "cancelled before it started");
      // A job that came while the GPU was lost waits for the new device: it never ran, so it is not failed.
      if (this.recovery) {
        show("device lost", `${this.losing} Job ${job} waits for it.`);
        if (!(await this.recovery)) return this.fail(job, "no-device", this.noGpu);
      }
      if (socket !== this.socket) return; // the link dropped while it waited; the notebook failed it
      if (this.cancelled.delete(job)) return this.fail(job, "cancelled", "cancelled before it started");
      if (!this.executor) return this.fail(job, this.gone ? "no-device" : "no-webgpu", this.noGpu || "this page has no WebGPU device");
      state.job = job;
      const warmed = this.executor.warmDispatches - this.warmedAt; // while it arrived and waited
      const steps = message.fields.steps.length;
      const received = (message.arrays || []).reduce((n, a) => n + a.bytes.byteLength, 0);
      show("running", `job ${job}: ${steps} GPU step${steps === 1 ? "" : "s"} on ${(received / 1e6).toFixed(1)} MB received`);
      const started = performance.now();
      // A GPU lost meanwhile ends the job at once (deviceLost answered it): the jobs behind it then
      // wait for the new device, instead of waiting on the lost one and finding none when their turn comes.
      const running = this.executor.run(message);
      const ran = await Promise.race([running, this.executor.device.lost.then(() => null)]);
      if (!ran) {
        running.catch(() => {}); // what the lost device does with it no longer matters
        return;
      }
      const { outputs, timings } = ran;
      if (socket !== this.socket) return; // the link dropped meanwhile; the notebook already failed the job
      if (this.cancelled.delete(job)) return this.fail(job, "cancelled", "cancelled while running");
      // queue: waiting here for the jobs ahead; ahead: how many there were when it came.
      Object.assign(timings, { queue: started - arrived, ahead, warmed });
      this.warmedAt = this.executor.warmDispatches;
      const result = { type: "result", fields: { job, timings }, arrays: outputs };
      this.sending += 1;
      this.outbox = this.outbox.then(() => this.sendResult(result, arrived, socket)).catch((e) => console.error("webnet:", e));
    } catch (e) {
      const missing = e instanceof JobError ? e.missing : [];
      const cache = this.executor ? this.executor.cache.held() : []; // (none after a device loss)
      this.fail(job, e instanceof JobError ? e.kind : "internal", e.message || String(e), { missing, cache });
    } finally {
      this.inHand -= 1;
      state.job = null;
      this.rewarm();
      this.settle();
    }
  }

  // A result goes back while the next job runs; it says how long the job was here (the notebook
  // takes that from the job's whole time to measure the link) and what the cache now holds.
  async sendResult(result, arrived, socket) {
    const job = result.fields.job;
    try {
      if (socket !== this.socket) return; // the link dropped meanwhile; the notebook already failed the job
      result.fields.timings.held = performance.now() - arrived;
      result.fields.cache = this.executor ? this.executor.cache.held() : [];
      await this.send(result, (part) => show("running", `job ${job}: sending the result, ${Math.round(part * 100)}%`));
      state.jobsDone += 1;
      state.lastJobMs = result.fields.timings.kernel;
    } finally {
      this.sending -= 1;
      this.settle();
    }
  }

  // Idle once nothing is computing or waiting to be sent (or waiting for the GPU to come back).
  settle() {
    if (!this.socket || this.sending) return;
    if (this.recovery) show("device lost", this.losing); // (jobs here wait for it: none runs)
    else if (this.inHand) return;
    else if (this.executor) show("idle");
    else if (this.gone) show("GPU gone", this.gone);
    else show("no WebGPU", this.noGpu);
  }

  fail(job, kind, text, extra = {}) {
    this.send({ type: "error", fields: { job, kind, message: text, ...extra } });
  }

  // Sends frame by frame, waiting while the socket's buffer is full: a large result then
  // never sits in memory twice, and a pong can slip in between its frames.  `progress` hears
  // the fraction sent after each frame (over a phone's uplink, a result can take a while).
  async send(message, progress = null) {
    const socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const total = (message.arrays || []).reduce((n, a) => n + a.bytes.byteLength, 0);
    let sent = 0;
    for (const frame of encode(message, this.ids++)) {
      while (socket.bufferedAmount > HIGH_WATER) {
        if (socket.readyState !== WebSocket.OPEN) return;
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      socket.send(frame);
      sent += frame.byteLength;
      if (progress && total) progress(Math.min(1, sent / total));
    }
  }

  deviceLost(why) {
    // A lost GPU device (driver reset, tab backgrounded too long on iOS): report it, then get a new one.
    this.executor?.warm(false);
    this.executor = null;
    this.noGpu = `GPU device lost: ${why}`;
    if (state.job) this.fail(state.job, "device-lost", why);
    this.losing = `The GPU stopped (${why}); getting it back. Work that comes meanwhile waits for it.`;
    show("device lost", this.losing);
    // Jobs that come meanwhile wait on this (runJob); one running when it went has failed above.
    this.recovery = openDevice((w) => this.deviceLost(w), megabytes("maxbuffer", Infinity)).then(
      (gpu) => {
        this.gpu = gpu;
        this.executor = new Executor(gpu.device, cacheBytes(), megabytes("maxbuffer", Infinity));
        this.noGpu = "";
        this.recovery = null;
        this.settle();
        return true;
      },
      (e) => {
        this.gpu = null; // a hello on a later link says this page has no WebGPU, and why
        this.noGpu = `GPU device lost and none came back: ${e.message}`;
        this.recovery = null;
        // The notebook hears it at once, so the jobs held here go to other devices now, not when a lease ends.
        this.fail("", "no-device", this.noGpu);
        this.gone = `This ${deviceKind()}'s GPU stopped and the browser did not give it back (${e.message}). ` +
          "The notebook sends its work to other devices. Reload this page to try again.";
        this.settle();
        return false;
      },
    );
  }

  watch() {
    // A link on which the broker went quiet is dead even if the socket has not noticed yet.
    if (this.socket && performance.now() - this.lastHeard > this.silenceLimit) {
      this.socket.close(CLOSE.SILENT, "broker silent");
    }
  }

  visible() {
    if (document.visibilityState !== "visible" || this.stopped) return;
    this.keepAwake();
    if (!this.socket) {
      clearTimeout(this.retry);
      this.connect();
    }
  }

  async keepAwake() {
    // The Screen Wake Lock keeps a phone's screen (and so its socket) alive while connected.
    if (!("wakeLock" in navigator) || (this.wakeLock && !this.wakeLock.released)) return;
    try {
      this.wakeLock = await navigator.wakeLock.request("screen");
    } catch {
      // Refused (battery saver, page hidden): the page still works, the phone may sleep.
    }
  }
}

const token = new URLSearchParams(location.search).get("token");
if (!token) {
  show("no token", "This link is incomplete (it has no ?token=). Copy the whole link from %webnet url in the notebook.");
} else {
  $("hint").textContent = `This ${deviceKind()} is helping a notebook compute. Keep this page open and the screen on.`;
  if (missingWebGPU()) show("no WebGPU", missingWebGPU());
  window.webnetWorker = new Worker(token); // for debugging from the console (and for tests)
  window.webnetWorker.start();
}
