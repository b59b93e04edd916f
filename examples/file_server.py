"""@web_server: any server on a container port. Here Python's http.server lists a directory.

Each container has its own network namespace, so port 8000 is the container's own: it does not
collide with the gateway or with other containers of the same function.
"""

import subprocess

from cove import App, web_server

app = App()
PORT = 8000


@app.function()
@web_server(PORT)
def my_file_server():
    subprocess.Popen(f"python -m http.server -d / {PORT}", shell=True)
