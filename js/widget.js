// The device panel shown by %webnet start (an anywidget ESM module): QR code, worker link,
// and a table of devices that the broker thread updates live through the `devices` trait.

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
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
  side.append(title, link, note, table);
  el.append(qr, side);

  const draw = () => {
    const running = model.get("running");
    const devices = model.get("devices");
    title.textContent = running ? `webnet: ${devices.length} device${devices.length === 1 ? "" : "s"} connected` : "webnet: broker stopped";
    qr.innerHTML = running ? model.get("qr_svg") : "";
    link.href = model.get("url");
    link.textContent = running ? model.get("url") : "";
    note.textContent = running ? model.get("note") : "";
    table.replaceChildren();
    if (!devices.length) return;
    const head = table.insertRow();
    for (const h of ["id", "device", "adapter", "state", "jobs", "last job"]) cell(head, h, "webnet-head");
    for (const d of devices) {
      const row = table.insertRow();
      row.dataset.device = d.id;
      cell(row, d.id);
      cell(row, d.name);
      cell(row, d.adapter);
      cell(row, d.state, `webnet-state webnet-${d.state.replace(/\s+/g, "-")}`);
      cell(row, String(d.jobs_done));
      cell(row, d.last_job_ms === null ? "–" : `${d.last_job_ms.toFixed(1)} ms`);
      if (d.reason) row.title = d.reason;
    }
  };
  for (const name of ["devices", "running", "url", "qr_svg", "note"]) model.on(`change:${name}`, draw);
  draw();
}

export default { render };
