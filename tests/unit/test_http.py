"""Which proxy an Omnisend URL goes through: the variables curl reads, NO_PROXY as curl reads
it."""

from __future__ import annotations

import pytest

from connector.omnisend.http import proxy_for

URL = "https://api.omnisend.com/api"


def proxy(env: dict[str, str], url: str = URL) -> str | None:
    found = proxy_for(url, env)
    return None if found is None else str(found.url)


def test_the_scheme_s_proxy_then_all_proxy_and_lower_case_wins() -> None:
    assert proxy({}) is None
    assert proxy({"HTTPS_PROXY": "http://egress:3128"}) == "http://egress:3128"
    assert proxy({"HTTP_PROXY": "http://egress:3128"}) is None  # not for https
    assert proxy({"ALL_PROXY": "http://all:3128"}) == "http://all:3128"
    both = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"}
    assert proxy(both) == "http://lower:2"
    assert (
        proxy({"HTTP_PROXY": "http://egress:3128"}, "http://sim:8080/api") == "http://egress:3128"
    )


@pytest.mark.parametrize(
    ("no_proxy", "bypassed"),
    [
        ("*", True),
        ("api.omnisend.com", True),
        ("omnisend.com", True),
        (".omnisend.com", True),
        ("localhost, .omnisend.com", True),
        ("api.omnisend.com:443", True),
        ("api.omnisend.com:8443", False),
        ("notomnisend.com", False),
        ("", False),
    ],
)
def test_no_proxy(no_proxy: str, bypassed: bool) -> None:
    env = {"HTTPS_PROXY": "http://egress:3128", "NO_PROXY": no_proxy}
    assert (proxy(env, "https://api.omnisend.com:443/api") is None) == bypassed
    assert (proxy(env, "https://api.omnisend.com/api") is None) == bypassed  # 443 by default


@pytest.mark.parametrize(
    ("url", "no_proxy", "bypassed"),
    [
        ("https://10.1.2.3/api", "10.0.0.0/8", True),
        ("https://10.1.2.3/api", "10.1.2.3", True),
        ("https://11.1.2.3/api", "10.0.0.0/8", False),
        ("https://[::1]:8080/api", "::1", True),
        ("https://[::1]:8080/api", "[::1]:8080", True),
        ("https://[::1]:8080/api", "[::1]:9090", False),
        ("https://[fd00::5]/api", "fd00::/8", True),
        ("http://sim.local/api", "sim.local:80", True),
    ],
)
def test_no_proxy_addresses_ranges_and_default_ports(
    url: str, no_proxy: str, bypassed: bool
) -> None:
    env = {
        "HTTPS_PROXY": "http://egress:3128",
        "HTTP_PROXY": "http://egress:3128",
        "NO_PROXY": no_proxy,
    }
    assert (proxy(env, url) is None) == bypassed
