"""The URL a gate checks is the URL the request goes to (issue 20, finding 7).

`eventd.outbound.parse_url` parses a URL once; the kind sends `Address.url`, rebuilt from the
parts the gate checked. For any string: either it is refused, or requests (and urllib3 under
it) sends to exactly the scheme, host, port, path and query the gate saw, and a parser that
read the original string would have found the same host.
"""

from __future__ import annotations

import requests
import urllib3.util
from hypothesis import given
from hypothesis import strategies as st

from eventd.outbound import BadAddress, parse_url

SCHEMES = ["http://", "https://", "HTTP://", "http:/", "http:\\\\", "//", "ftp://", "http:///"]
HOSTS = ["hooks.allowed.example", "127.0.0.1", "[::1]", "localhost", "0x7f.1", "2130706433",
         "Ex\u0430mple.com", "a..b", "h_1.internal", "xn--e1afmkfd.example"]
TRICKS = ["\\", "@", ":", "/", "?", "#", "%", "%5c", "%40", "%2e%2e", "..", "\t", "\n", " ",
          "\x00", "[", "]", "é", ":19555", ":0", ":65536", "user:pw@", "%3A"]
parts = st.lists(st.sampled_from(HOSTS + TRICKS), max_size=6).map("".join)
urls = st.builds(lambda scheme, authority, rest: scheme + authority + rest,
                 st.sampled_from(SCHEMES), parts, parts) | st.text(max_size=60)


def _port(parsed: urllib3.util.Url) -> int:
    return parsed.port or {"http": 80, "https": 443}[parsed.scheme]


@given(urls)
def test_the_host_checked_is_the_host_requests_connects_to(url: str) -> None:
    try:
        address, _ = parse_url(url)
    except BadAddress as exc:
        assert "user:pw" not in str(exc)  # the messages never quote the URL (its secrets)
        return
    sent = urllib3.util.parse_url(requests.Request("GET", address.url).prepare().url)
    assert (sent.scheme, (sent.host or "").strip("[]").lower(), _port(sent)) == \
        (address.scheme, address.host, address.port)
    assert sent.path == address.path and (sent.query or "") == address.query
    try:
        original = urllib3.util.parse_url(url.strip())
    except (urllib3.exceptions.LocationParseError, ValueError):
        return
    if original.host is not None:
        assert _same_host(original.host, address.host), (url, original.host, address.host)


def _same_host(read: str, checked: str) -> bool:
    import ipaddress

    read = read.strip("[]").lower().rstrip(".")
    try:
        return ipaddress.ip_address(read) == ipaddress.ip_address(checked)
    except ValueError:
        pass
    try:
        return read.encode("idna").decode() == checked
    except UnicodeError:
        return read == checked
