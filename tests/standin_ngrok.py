"""A stand-in for the ngrok agent: ngrok's service cannot be reached from the test machines.

pyngrok runs the program ``PYNGROK_NGROK_PATH`` names as ``ngrok start --none --log stdout
--config PATH``, reads its log lines, and creates endpoints through its local API.  This
program does what the agent does at those two boundaries, and carries an endpoint's
traffic as ngrok's edge would: TLS on a local port (``https://$STANDIN_HOST:PORT``, a
certificate made with webnet_magic's own LAN code), the ``Host`` header passed on, and the
free tier's warning page shown to a browser until it clicks through (a cookie), which
the WebSocket upgrade from the same page then carries.

The authtoken in the config picks a behaviour: ``standin-refused`` (ERR_NGROK_107, then
exit), ``standin-busy`` (ERR_NGROK_108, then exit), ``standin-silent`` (no output at all,
as a hung agent); anything else works.  The bytes carried so far, both ways, are kept
in ``$STANDIN_LOG`` (rewritten as they pass: the agent is killed, not asked to stop).
"""

from __future__ import annotations

import asyncio
import datetime
import html
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from webnet_magic.tunnel.lan import make_certificate

HOST = os.environ.get("STANDIN_HOST", "localhost")
VISITED = "standin_visited=1"


def log(level: str, msg: str, **fields: str) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")
    extra = " ".join(f'{k}="{v}"' if " " in v else f"{k}={v}" for k, v in fields.items())
    print(f't={stamp} lvl={level} msg="{msg}" {extra}'.rstrip(), flush=True)


class Edge:
    """The public side of the endpoints: TLS, the warning page, then bytes both ways."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.certificate = make_certificate(HOST)
        self.endpoints: dict[str, tuple[asyncio.AbstractServer, str]] = {}
        self.carried = 0
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def open(self, name: str, upstream: str) -> str:
        return asyncio.run_coroutine_threadsafe(self._open(name, upstream), self.loop).result(10)

    def close(self, name: str) -> None:
        server, _ = self.endpoints.pop(name)
        self.loop.call_soon_threadsafe(server.close)

    async def _open(self, name: str, upstream: str) -> str:
        target = urlsplit(upstream)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._connection(reader, writer, target.hostname or "127.0.0.1", target.port or 80)

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self.certificate.context)
        port = server.sockets[0].getsockname()[1]
        url = f"https://{HOST}:{port}"
        self.endpoints[name] = (server, url)
        return url

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if path.startswith("/__standin_visit"):
            target = parse_qs(urlsplit(path).query).get("next", ["/"])[0]
            await self._respond(writer, "302 Found", b"", Location=target,
                                **{"Set-Cookie": f"{VISITED}; Path=/; Secure; SameSite=Lax"})  # fmt: skip
            return
        browser = "Mozilla" in headers.get("user-agent", "")
        if browser and VISITED not in headers.get("cookie", "") and "ngrok-skip-browser-warning" not in headers:
            page = (
                "<!doctype html><title>You are about to visit</title><h1>You are about to visit "
                f"{html.escape(HOST)}</h1><p>This website is served for free through a tunnel.</p>"
                f'<a id="visit" href="/__standin_visit?next={quote(path, safe="")}">Visit Site</a>'
            ).encode()
            await self._respond(writer, "200 OK", page, **{"Content-Type": "text/html"})
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        forwarded = head.replace(b"\r\n", b"\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: https\r\n", 1)
        upstream_writer.write(forwarded)
        self.count(len(head))
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    def count(self, moved: int) -> None:
        self.carried += moved
        Path(os.environ.get("STANDIN_LOG", os.devnull)).write_text(str(self.carried))

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(1 << 16):
                sink.write(chunk)
                self.count(len(chunk))
                await sink.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            sink.close()

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: str, body: bytes, **headers: str) -> None:
        head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        writer.close()


def api(edge: Edge) -> ThreadingHTTPServer:
    """The agent's local API, as much of it as pyngrok uses (v3 endpoints)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def reply(self, status: int, body: object = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            listed = [{"name": n, "url": url} for n, (_, url) in edge.endpoints.items()]
            self.reply(200, {"endpoints": listed, "tunnels": listed})

        def do_POST(self) -> None:
            options = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            name, upstream = options["name"], options["upstream"]["url"]
            url = edge.open(name, upstream)
            log("info", "started tunnel", obj="tunnels", name=name, addr=upstream, url=url)
            self.reply(201, {"id": f"ep_{len(edge.endpoints)}", "name": name, "url": url,
                             "public_url": url, "upstream": {"url": upstream}, "proto": "https"})  # fmt: skip

        def do_DELETE(self) -> None:
            edge.close(self.path.rsplit("/", 1)[-1])
            self.reply(204)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str]) -> int:
    if argv[:1] == ["version"]:
        print("ngrok version 3.99.0-standin")
        return 0
    config = argv[argv.index("--config") + 1] if "--config" in argv else ""
    text = Path(config).read_text() if config else ""
    found = re.search(r'authtoken:\s*"?([^"\n]*)"?', text)
    token = found.group(1) if found else ""
    if token == "standin-silent":
        time.sleep(3600)
        return 1
    if token == "standin-refused":
        log("eror", "failed to reconnect session", obj="tunnels.session",
            err="authentication failed: The authtoken you specified is properly formed, but it is invalid.\\n\\n"
                "ERR_NGROK_107")  # fmt: skip
        return 1
    if token == "standin-busy":
        log("eror", "failed to reconnect session", obj="tunnels.session",
            err="Your account is limited to 1 simultaneous ngrok agent sessions.\\n\\nERR_NGROK_108")  # fmt: skip
        return 1
    server = api(Edge())
    log("info", "starting web service", obj="web", addr=f"127.0.0.1:{server.server_address[1]}")
    log("info", "tunnel session started", obj="tunnels.session")
    log("info", "client session established", obj="csess", id="standin")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
