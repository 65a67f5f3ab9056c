"""The stream's own connect (eventd/sources/dockercloud/dial.py): the proxy the environment
names, the CONNECT tunnel against proxies that answer badly, and the TLS defaults, each
against a real socket on 127.0.0.1."""

from __future__ import annotations

import base64
import socket
import threading

import pytest
from websocket import WebSocketProxyException

from eventd.sources.dockercloud.dial import Dial, Proxy, proxy_for, target_of


class OneAnswerProxy:
    """A proxy that reads one CONNECT request and answers it with `answer` (then holds)."""

    def __init__(self, answer: bytes) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.answer = answer
        self.request = b""
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            client, _ = self.server.accept()
        except OSError:
            return
        with client:
            while b"\r\n\r\n" not in self.request:
                chunk = client.recv(4096)
                if not chunk:
                    break
                self.request += chunk
            if not self.answer:
                return  # closes the connection at once
            try:
                client.sendall(self.answer)
            except OSError:
                pass
            self.done.wait(10)

    def close(self) -> None:
        self.done.set()
        self.server.close()


def _open(url: str, sslopt: dict, timeout: float) -> None:
    dial = Dial()
    try:
        dial.open(url, sslopt, timeout).close()
    finally:
        dial.done()


@pytest.fixture
def answering(monkeypatch):
    proxies: list[OneAnswerProxy] = []

    def make(answer: bytes, userinfo: str = "") -> OneAnswerProxy:
        proxy = OneAnswerProxy(answer)
        proxies.append(proxy)
        monkeypatch.setenv("http_proxy", f"http://{userinfo}127.0.0.1:{proxy.port}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def test_a_proxy_that_refuses_the_tunnel_is_an_error_naming_its_status(answering):
    proxy = answering(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    with pytest.raises(WebSocketProxyException, match="status: 407"):
        _open("ws://stream.example.invalid:8000/v1/events", {}, 5.0)
    assert proxy.request.startswith(b"CONNECT stream.example.invalid:8000 HTTP/1.1\r\n")


def test_a_proxy_answering_without_end_is_cut_off_not_read_forever(answering):
    answering(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000)
    with pytest.raises(WebSocketProxyException, match="too long"):
        _open("ws://stream.example.invalid/v1/events", {}, 5.0)


@pytest.mark.parametrize("answer", [b"\x00\xff garbage\r\n\r\n", b"HTTP/1.1 2000 x\r\n\r\n",
                                    b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1\r\n\r\n"])
def test_a_proxy_answering_nonsense_is_a_proxy_error(answering, answer):
    answering(answer)
    with pytest.raises(WebSocketProxyException, match="failed CONNECT"):
        _open("ws://stream.example.invalid/v1/events", {}, 5.0)


def test_a_proxy_that_closes_is_a_proxy_error(answering):
    answering(b"")
    with pytest.raises(WebSocketProxyException, match="closed"):
        _open("ws://stream.example.invalid/v1/events", {}, 5.0)


def test_the_proxy_urls_credentials_go_as_basic_auth_to_the_proxy_only(answering):
    proxy = answering(b"HTTP/1.1 403 Forbidden\r\n\r\n", userinfo="ops%40corp:s3cr%3At@")
    with pytest.raises(WebSocketProxyException) as caught:
        _open("ws://stream.example.invalid/v1/events", {}, 5.0)
    token = base64.b64encode(b"ops@corp:s3cr:t").decode()
    assert f"Proxy-Authorization: Basic {token}\r\n".encode() in proxy.request
    assert "s3cr" not in str(caught.value)


@pytest.mark.parametrize("no_proxy, host, bypassed", [
    ("*", "stream.example.com", True),
    ("example.com", "stream.example.com", True),
    (".example.com", "stream.example.com", True),
    ("example.com", "badexample.com", False),
    ("10.0.0.0/8", "10.1.2.3", True),
    ("10.0.0.0/8", "11.1.2.3", False),
    ("not/a/net,,  ,10.0.0.0/99", "10.1.2.3", False),  # hostile entries are skipped
    ("stream.example.com", "stream.example.com", True),
    ("", "stream.example.com", False),
])
def test_no_proxy_as_websocket_client_reads_it(no_proxy, host, bypassed):
    environ = {"https_proxy": "http://proxy.internal:3128", "no_proxy": no_proxy}
    expected = None if bypassed else Proxy("proxy.internal", 3128, None)
    assert proxy_for(host, True, environ) == expected


def test_wss_uses_https_proxy_and_ws_uses_http_proxy():
    environ = {"HTTPS_PROXY": "http://secure:1", "http_proxy": "plain:2"}
    assert proxy_for("h", True, environ) == Proxy("secure", 1, None)
    assert proxy_for("h", False, environ) == Proxy("plain", 2, None)


@pytest.mark.parametrize("url", ["http://h/", "ws:///path", "wss://h:99999/", "ftp://h"])
def test_a_stream_url_that_is_not_ws_is_refused(url):
    with pytest.raises(Exception, match="URL|port"):
        target_of(url)


def test_default_ports():
    assert target_of("wss://h/v1") == ("h", 443, True)
    assert target_of("ws://h/v1") == ("h", 80, False)
    assert target_of("ws://[::1]:81/v1") == ("::1", 81, False)
