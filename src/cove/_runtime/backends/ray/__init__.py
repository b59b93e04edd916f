"""The Ray backend: containers as actors on the nodes of a Ray cluster."""
