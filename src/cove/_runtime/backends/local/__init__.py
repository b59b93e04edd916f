"""The local backend: containers as bubblewrap-sandboxed processes on this machine, forked from zygotes."""
