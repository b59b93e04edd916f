"""An HTTP server (Modal 1.5 `@app.server`): any process listening on a port, started in `@enter`.

Try it: `cove serve examples/http_server.py`, then send requests with a session header; all of one
session's requests reach the same container:

    curl -H "Modal-Session-ID: alice" http://$USER--http-server-echo-dev.localhost:8000/

While no container is ready the server answers `503` with `Retry-After: 1` (a container is starting):
retry. Requests are never queued.
"""

import subprocess
import sys

import modal

app = modal.App("http-server")
PORT = 8000

# The server could be anything (vLLM, a Rust binary, Node...): this one says which container answered.
SERVER = f"""
import http.server, json, os

class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{
            "container": os.environ["MODAL_TASK_ID"],
            "session": self.headers.get("Modal-Session-ID"),
            "path": self.path,
        }}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("0.0.0.0", {PORT}), Echo).serve_forever()
"""


@app.server(port=PORT, unauthenticated=True, target_concurrency=8, exit_grace_period=5)
class Echo:
    @modal.enter()
    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER])

    @modal.exit()
    def stop(self):
        self.proc.terminate()
