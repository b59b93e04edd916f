"""URL rules: the host name of each web endpoint, as Modal computes it (reference §3)."""

from __future__ import annotations

import hashlib
import re

from cove.config import slugify
from cove.exception import InvalidError

#: DNS limits a single label to 63 characters (RFC 1035 §2.3.4).
MAX_DNS_LABEL = 63
_HASH_LEN = 6
_USER_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


def validate_user_label(label: str) -> str:
    """A `label=` given by the user is used verbatim, so it must already be a valid host label."""
    if not _USER_LABEL_RE.match(label):
        raise InvalidError(
            f"Invalid web endpoint label {label!r}: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, e.g. label='my-api'."
        )
    return label


def default_label(app_name: str, function_tag: str) -> str:
    """`<app>-<function>`, each slugified; `Model.predict` becomes `model-predict`."""
    return f"{slugify(app_name)}-{slugify(function_tag.replace('.', '-'))}"


def endpoint_subdomain(workspace: str, label: str, *, dev_suffix: str | None = None) -> str:
    """`{workspace}--{label}[-{dev_suffix}]`, truncated to 63 characters.

    An over-long name keeps its first characters, then `-` and the first six hex digits of the
    SHA-256 of the full name, then the dev suffix, as Modal documents.
    """
    suffix = f"-{dev_suffix}" if dev_suffix else ""
    base = f"{workspace}--{label}"
    full = base + suffix
    if len(full) <= MAX_DNS_LABEL:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:_HASH_LEN]
    keep = MAX_DNS_LABEL - len(suffix) - _HASH_LEN - 1
    return f"{base[:keep]}-{digest}{suffix}"


def endpoint_host(
    workspace: str,
    app_name: str,
    function_tag: str,
    *,
    label: str | None = None,
    dev_suffix: str | None = None,
    base_domain: str = "localhost",
) -> str:
    """The full host name that routes to one web endpoint."""
    chosen = label if label is not None else default_label(app_name, function_tag)
    return f"{endpoint_subdomain(workspace, chosen, dev_suffix=dev_suffix)}.{base_domain}"


def endpoint_url(host: str, port: int, *, scheme: str = "http") -> str:
    """A URL a browser or curl can open: `*.localhost` resolves to loopback (RFC 6761 §6.3)."""
    default_port = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" if port == default_port else f"{scheme}://{host}:{port}"
