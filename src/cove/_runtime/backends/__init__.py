"""Runtime backends: where a container runs.

`local` runs bubblewrap-sandboxed processes on this machine; `ray` runs actors on a Ray cluster.
"""
