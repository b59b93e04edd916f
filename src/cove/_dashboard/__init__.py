"""The dashboard: apps, containers, logs and traffic as web pages, served by the server itself.

`service.Dashboard` runs the ASGI app (`app.build_app`) on a unix socket of its own and puts it
behind the gateway at `dashboard.<base domain>`; `/metrics` there is the Prometheus exposition of
the gateway's per-function figures (`exposition.py`). Who may read and who may act is `access.py`.
"""

from cove._dashboard.service import Dashboard

__all__ = ["Dashboard"]
