"""The server process's composition root: control plane, gateway and runtime wired on one event loop."""
