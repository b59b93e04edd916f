"""@web_server: any server on a container port. Here Python's http.server lists a directory.

The port defaults to 8000 as in the guide; COVE_EXAMPLE_PORT overrides it, because until containers
get their own network namespaces the port is shared with the host.
"""

import os
import subprocess

from cove import App, web_server

app = App()
PORT = int(os.environ.get("COVE_EXAMPLE_PORT", "8000"))


@app.function()
@web_server(PORT)
def my_file_server():
    subprocess.Popen(f"python -m http.server -d / {PORT}", shell=True)
