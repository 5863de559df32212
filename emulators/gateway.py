"""A front door like `https://REGION-PROJECT.cloudfunctions.net/FUNCTION/...`: one base URL,
`/<function>/<path>` forwarded to that function's process with `/<path>`. Responses stream
through unbuffered, so Server-Sent Events work."""

from __future__ import annotations

import http.client
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import SplitResult, urlsplit

from emulators.proc import LOOPBACK

log = logging.getLogger("emulators.gateway")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailers", "transfer-encoding", "upgrade", "host"})


class Gateway:
    def __init__(self, function_urls: dict[str, str], port: int = 0) -> None:
        self.routes = {name: urlsplit(url) for name, url in function_urls.items()}
        handler = _make_handler(self.routes)
        self.server = ThreadingHTTPServer((LOOPBACK, port), handler)
        self.server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="gateway",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _make_handler(routes: dict[str, SplitResult]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            log.debug(format, *args)

        def _proxy(self) -> None:
            parts = urlsplit(self.path)
            name, _, rest = parts.path.lstrip("/").partition("/")
            target = routes.get(name)
            if target is None:
                self._not_found()
                return
            path = "/" + rest + (f"?{parts.query}" if parts.query else "")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream = http.client.HTTPConnection(target.netloc, timeout=600)
            try:
                upstream.request(self.command, path, body=body, headers=headers)
                self._relay(upstream.getresponse())
            except OSError as exc:
                log.warning("gateway to %s failed: %s", name, exc)
                self.close_connection = True
            finally:
                upstream.close()

        def _relay(self, resp: http.client.HTTPResponse) -> None:
            # The function's own Server and Date headers pass through; add none of ours.
            self.log_request(resp.status)
            self.send_response_only(resp.status, resp.reason)
            bodiless = self.command == "HEAD" or resp.status in (204, 304)
            for key, value in resp.getheaders():
                if key.lower() in HOP_BY_HOP or (key.lower() == "content-length" and not bodiless):
                    continue
                self.send_header(key, value)
            if bodiless:
                self.end_headers()
                return
            # Chunked, flushed per read: streams (SSE) reach the client as they are produced.
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := resp.read1(65536):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def _not_found(self) -> None:
            body = (b'{"type":"about:blank","title":"Not found","status":404,'
                    b'"code":"unknown_function","detail":"no such function"}')
            self.send_response(404)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def __getattr__(self, name: str) -> object:
            # http.server looks up do_<METHOD>: forward every method, as the real front door
            # does, so the function itself answers unknown methods (405 problem+json).
            if name.startswith("do_"):
                return self._proxy
            raise AttributeError(name)

    return Handler
