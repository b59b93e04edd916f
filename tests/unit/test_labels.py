"""URL labels of web endpoints, as Modal computes them (reference §3)."""

from __future__ import annotations

import hashlib

import pytest

from cove._labels import (
    MAX_DNS_LABEL,
    default_label,
    endpoint_host,
    endpoint_subdomain,
    endpoint_url,
    validate_user_label,
)
from cove.exception import InvalidError


def test_default_label_is_app_then_function() -> None:
    assert default_label("shop", "square") == "shop-square"


def test_default_label_slugifies_underscores_and_case() -> None:
    assert default_label("text_to_speech", "flask_app") == "text-to-speech-flask-app"
    assert default_label("My App", "Hello_World") == "my-app-hello-world"


def test_class_method_label_joins_class_and_method() -> None:
    assert default_label("example-comfyui", "ComfyUI.api") == "example-comfyui-comfyui-api"


@pytest.mark.parametrize("label", ["foo", "my-api", "a", "v2", "a1-b2"])
def test_valid_user_labels_are_used_verbatim(label: str) -> None:
    assert validate_user_label(label) == label


@pytest.mark.parametrize("label", ["", "My_API", "-lead", "trail-", "has space", "dot.ted", "UPPER"])
def test_invalid_user_labels_are_refused_with_an_example(label: str) -> None:
    with pytest.raises(InvalidError, match="label='my-api'"):
        validate_user_label(label)


def test_subdomain_is_workspace_double_dash_label() -> None:
    assert endpoint_subdomain("ecorp", "shop-square") == "ecorp--shop-square"


def test_dev_suffix_is_appended_to_generated_and_user_labels() -> None:
    assert endpoint_subdomain("ecorp", "text-to-speech-flask-app", dev_suffix="dev") == (
        "ecorp--text-to-speech-flask-app-dev"
    )
    assert (
        endpoint_host("ecorp", "shop", "square", label="foo", dev_suffix="dev") == "ecorp--foo-dev.localhost"
    )


def test_host_uses_the_default_label_and_base_domain() -> None:
    assert endpoint_host("ecorp", "text_to_speech", "flask_app", base_domain="example.test") == (
        "ecorp--text-to-speech-flask-app.example.test"
    )


def test_a_63_character_subdomain_is_kept_whole() -> None:
    label = "a" * (MAX_DNS_LABEL - len("ws--"))
    assert endpoint_subdomain("ws", label) == f"ws--{label}"


@pytest.mark.parametrize("dev_suffix", [None, "dev"])
def test_long_subdomains_are_truncated_to_63_with_a_sha256_prefix_and_the_suffix(
    dev_suffix: str | None,
) -> None:
    workspace = "ecorp"
    label = "text-to-speech-really-really-realllly-long-function-name-that-goes-on"
    suffix = f"-{dev_suffix}" if dev_suffix else ""
    full = f"{workspace}--{label}{suffix}"
    digest = hashlib.sha256(full.encode()).hexdigest()[:6]

    result = endpoint_subdomain(workspace, label, dev_suffix=dev_suffix)

    assert len(result) == MAX_DNS_LABEL
    keep = MAX_DNS_LABEL - len(suffix) - 7
    assert result == f"{full[:keep]}-{digest}{suffix}"
    assert result.endswith(suffix)


def test_truncation_depends_on_the_full_name() -> None:
    long = "x" * 80
    assert endpoint_subdomain("ws", long + "a") != endpoint_subdomain("ws", long + "b")


def test_url_omits_the_default_port() -> None:
    assert endpoint_url("ws--a.localhost", 8000) == "http://ws--a.localhost:8000"
    assert endpoint_url("ws--a.localhost", 80) == "http://ws--a.localhost"
    assert endpoint_url("ws--a.example.com", 443, scheme="https") == "https://ws--a.example.com"
