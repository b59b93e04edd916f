"""Control plane: app versions, secrets, logs and the API the CLI talks to."""
