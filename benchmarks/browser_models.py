"""Models in the browser: webnet's worker page against onnxruntime-web's WebGPU backend, same Chromium.

Both run the same ONNX graph on the same WebGPU adapter of the same browser build (Debian's
Chromium; SwiftShader where there is no GPU), in the same run:

- webnet: the model called from here on a worker page (``session.local_worker("browser")``), a
  new batch each call; ``device`` is the page's own GPU time for it;
- onnxruntime-web (the npm package ``onnxruntime-web``, its ``ort.webgpu`` build) in a page served
  from loopback, timing ``session.run`` in the page itself (no notebook, no transport).

    npm install --prefix benchmarks/web onnxruntime-web     # once; only this benchmark uses it
    python benchmarks/browser_models.py [--models squeezenet resnet50] [--batches 1 4] [--repeat 3]
    python benchmarks/browser_models.py --quick              # toy size (CI); without the npm package
                                                              # only webnet's side runs

onnxruntime-web 1.30 refuses ONNX IR versions above 13, so the graphs are saved at IR 8.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import tornado.httpserver
import tornado.netutil
import tornado.web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.model_zoo: the torch models

import webnet_magic as wm
from webnet_magic.client.session import PrecisionWarning, Session
from webnet_magic.worker.launch import chromium_flags, find_chromium

ORT = Path(__file__).resolve().parent / "web" / "node_modules" / "onnxruntime-web" / "dist"

PAGE = """<!doctype html><meta charset="utf-8"><title>ort-web</title>
<script type="module">
import * as ort from "/ort/ort.webgpu.min.mjs";
ort.env.wasm.wasmPaths = "/ort/";
window.timeIt = async (shape, repeat) => {
  const session = await ort.InferenceSession.create("/model.onnx", { executionProviders: ["webgpu"] });
  const size = shape.reduce((a, b) => a * b, 1);
  const feed = (k) => {
    const data = new Float32Array(size);
    for (let i = 0; i < size; i++) data[i] = Math.sin(i * 0.37 + k);
    return { [session.inputNames[0]]: new ort.Tensor("float32", data, shape) };
  };
  const first = await session.run(feed(0));
  await first[session.outputNames[0]].getData();
  let best = Infinity;
  for (let k = 1; k <= repeat; k++) {
    const start = performance.now();
    const out = await session.run(feed(k));
    await out[session.outputNames[0]].getData();
    best = Math.min(best, performance.now() - start);
  }
  return best;
};
window.ready = true;
</script>"""


class OrtWebPage:
    """onnxruntime-web in a page of Debian's Chromium, served from loopback with the model under test."""

    def __init__(self, folder: Path) -> None:
        from playwright.sync_api import sync_playwright

        self.folder = folder
        (folder / "index.html").write_text(PAGE)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait()
        self.playwright = sync_playwright().start()
        flags = [f for f in chromium_flags(software_gpu=True) if f != "--headless=new"]
        self.browser = self.playwright.chromium.launch(executable_path=find_chromium(), args=flags, headless=True)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = tornado.web.Application([
            (r"/ort/(.*)", tornado.web.StaticFileHandler, {"path": str(ORT)}),
            (r"/(.*)", tornado.web.StaticFileHandler, {"path": str(self.folder), "default_filename": "index.html"}),
        ])  # fmt: skip
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        ready.set()
        self.loop.run_forever()

    def best_ms(self, model: onnx.ModelProto, shape: tuple[int, ...], repeat: int) -> float:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.ir_version = min(model.ir_version, 8)
        (self.folder / "model.onnx").write_bytes(model.SerializeToString())
        page = self.browser.new_page()
        try:
            page.goto(f"http://127.0.0.1:{self.port}/")
            page.wait_for_function("window.ready === true", timeout=60_000)
            return float(page.evaluate("([shape, repeat]) => window.timeIt(shape, repeat)", [list(shape), repeat]))
        finally:
            page.close()

    def close(self) -> None:
        self.browser.close()
        self.playwright.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)


def webnet_ms(session: Session, model: onnx.ModelProto, x: np.ndarray, repeat: int) -> tuple[float, float]:
    """(best ms per call, the page's GPU ms for it), each call with a new batch, after a first call."""
    net = wm.load_model(model)
    net(x, session=session, timeout=1800)
    best, device = float("inf"), 0.0
    for k in range(repeat):
        start = time.perf_counter()
        job = net.submit(x + np.float32(k + 1), session=session)
        session.wait(job, 1800)
        elapsed = (time.perf_counter() - start) * 1e3
        if elapsed < best:
            best, device = elapsed, sum(t.progress.timings.get("kernel", 0.0) for t in job.tasks)
    return best, device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["squeezenet", "resnet50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one toy model at batch 1, one timed run (CI)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batches, args.repeat = ["mlp"], [1], 1
    warnings.simplefilter("ignore", PrecisionWarning)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import models as benchmarks_models

    session = wm.start(tunnel="off")
    ort = OrtWebPage(Path(tempfile.mkdtemp(prefix="ortweb-"))) if (ORT / "ort.webgpu.min.mjs").exists() else None
    try:
        session.local_worker("browser")
        (device,) = session.wait_for_devices(1, 180)
        where = "benchmarks/web" if ort else "not installed (npm install --prefix benchmarks/web onnxruntime-web)"
        print(f"in Chromium on {device['adapter']}; onnxruntime-web: {where}")
        header = ("model", "batch", "webnet ms", "device ms", "ort-web ms", "webnet/ort-web")
        print(" ".join(f"{h:>14}" for h in header))
        for name in args.models:
            for batch in args.batches:
                model, x = benchmarks_models.model_and_input(name, batch)
                ms, device_ms = webnet_ms(session, model, x, args.repeat)
                theirs = ort.best_ms(model, x.shape, args.repeat) if ort and x.dtype == np.float32 else float("nan")
                row = (name, batch, f"{ms:.1f}", f"{device_ms:.1f}", f"{theirs:.1f}", f"{ms / theirs:.2f}x")
                print(" ".join(f"{c!s:>14}" for c in row), flush=True)
    finally:
        if ort is not None:
            ort.close()
        wm.stop()


if __name__ == "__main__":
    main()
