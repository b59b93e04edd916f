"""Code that runs inside a container (and its zygotes): import the user's module, serve it, invoke it."""
