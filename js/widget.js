// The device panel shown by %webnet start (an anywidget ESM module): QR code, worker link, the
// fleet (devices with speed, state, jobs, failures), jobs in flight with their shards, the bytes
// moved this session and the connections refused.  The broker thread updates the traits live, even
// while a cell blocks.  Once the session stops the panel says so and how to start another; the
// kernel then replaces it with the same words as plain text, which is what a saved notebook keeps.

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function size(bytes) {
  for (const [unit, scale] of [["GB", 1e9], ["MB", 1e6], ["KB", 1e3]]) {
    if (bytes >= scale) return `${(bytes / scale).toFixed(1)} ${unit}`;
  }
  return `${bytes} B`;
}

// The largest buffer the device binds: its limits as reported, WebGPU's defaults where it said nothing.
function maxBuffer(limits) {
  return Math.min(limits.maxStorageBufferBindingSize ?? 128 << 20, limits.maxBufferSize ?? 256 << 20);
}

// A device's link as measured by the broker: rate from quiet jobs, round trip from heartbeats.
function linkFigures(mbps, rtt) {
  const rate = typeof mbps === "number" ? `${mbps >= 10 ? mbps.toFixed(0) : mbps.toFixed(1)} MB/s` : "";
  const trip = typeof rtt === "number" ? `${rtt.toFixed(0)} ms` : "";
  return [rate, trip].filter(Boolean).join(" · ") || "–";
}

function speed(gflops) {
  if (gflops === null || gflops === undefined) return "–";
  return gflops >= 1 ? `${gflops.toFixed(1)} GF/s` : `${(gflops * 1000).toFixed(0)} MF/s`;
}

function render({ model, el }) {
  el.classList.add("webnet-panel");
  const qr = document.createElement("div");
  qr.className = "webnet-qr";
  const side = document.createElement("div");
  side.className = "webnet-side";
  const title = document.createElement("div");
  title.className = "webnet-title";
  const link = document.createElement("a");
  link.target = "_blank";
  link.rel = "noopener";
  const note = document.createElement("div");
  note.className = "webnet-note";
  const table = document.createElement("table");
  table.className = "webnet-devices";
  const jobs = document.createElement("div");
  jobs.className = "webnet-jobs";
  const totals = document.createElement("div");
  totals.className = "webnet-totals";
  side.append(title, link, note, table, jobs, totals);
  el.append(qr, side);

  const draw = () => {
    const running = model.get("running");
    const devices = model.get("devices");
    title.textContent = running ? `webnet: ${devices.length} device${devices.length === 1 ? "" : "s"} connected` : "webnet: this session has ended";
    qr.innerHTML = running ? model.get("qr_svg") : "";
    if (running) link.href = model.get("url");
    else link.removeAttribute("href");
    link.textContent = running ? model.get("url") : "";
    note.textContent = running ? model.get("note") : "Run %webnet start to start a new one.";
    table.replaceChildren();
    jobs.replaceChildren();
    const tunnel = model.get("reach") === "ngrok" ? ` · through ngrok ${size(model.get("tunnel"))} of about ${size(model.get("tunnel_free"))} a month free` : "";
    const refused = model.get("refused") ?? 0; // 0 while the broker counts none
    const turnedAway = refused ? ` · ${refused} refused connection${refused === 1 ? "" : "s"}` : "";
    totals.textContent = running ? `sent ${size(model.get("sent"))} · received ${size(model.get("received"))}${tunnel}${turnedAway}` : "";
    if (devices.length) {
      const head = table.insertRow();
      for (const h of ["id", "device", "adapter", "state", "jobs", "speed", "link", "failures", "holds", "max buffer"]) cell(head, h, "webnet-head");
      for (const d of devices) {
        const row = table.insertRow();
        row.dataset.device = d.id;
        cell(row, d.id);
        cell(row, d.name);
        cell(row, d.adapter);
        cell(row, d.state, `webnet-state webnet-${d.state.replace(/\s+/g, "-")}`);
        cell(row, String(d.jobs_done));
        cell(row, speed(d.gflops));
        cell(row, linkFigures(d.link_mbps, d.rtt_ms));
        cell(row, String(d.failures), d.failures ? "webnet-failures" : "");
        cell(row, d.job || "");
        cell(row, size(maxBuffer(d.limits)));
        if (d.reason) row.title = d.reason;
      }
    }
    for (const job of model.get("jobs")) {
      const line = document.createElement("div");
      line.className = "webnet-job";
      line.dataset.job = job.id;
      const bar = document.createElement("progress");
      bar.max = job.total;
      bar.value = job.done;
      const holders = Object.entries(job.running).map(([task, device]) => `${device}: ${task}`);
      const text = document.createElement("span");
      text.textContent = ` ${job.id}: ${job.done}/${job.total} done${holders.length ? " · " + holders.join(", ") : ""}`;
      line.append(bar, text);
      jobs.append(line);
    }
  };
  for (const name of ["devices", "jobs", "sent", "received", "refused", "tunnel", "running", "url", "qr_svg", "note"]) model.on(`change:${name}`, draw);
  draw();
}

export default { render };
