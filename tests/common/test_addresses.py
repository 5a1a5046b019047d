"""The one host:port parser (cube_common.addresses) and the parsers built on it."""
from __future__ import annotations

import pytest

from cube_common.addresses import split_host_port
from cube_common.etcd import parse_endpoint
from cube_common.listen import host_of
from services.proxy.settings import Endpoint


@pytest.mark.parametrize("text,default,want", [
    ("10.0.0.1:2379", None, ("10.0.0.1", 2379)), ("[::1]:50051", None, ("::1", 50051)),
    (" localhost:0 ", None, ("localhost", 0)), ("master", 50051, ("master", 50051)),
    ("::1", 443, ("::1", 443)), ("[::1]", 443, ("::1", 443))])
def test_forms(text, default, want):
    assert split_host_port(text, default) == want


@pytest.mark.parametrize("text", ["", "host", ":1", "h:", "h:x", "h:65536", "a:b:1", "[::1]x", "[::1]:p", "h:-1"])
def test_malformed_or_portless(text):
    with pytest.raises(ValueError):
        split_host_port(text)


def test_callers_agree():
    assert parse_endpoint("[::1]:2379") == ("::1", 2379) == (Endpoint.parse("[::1]:2379").host, 2379)
    assert Endpoint.parse("0.0.0.0", 443) == Endpoint("0.0.0.0", 443)
    assert host_of("[::1]:50051") == "::1" and host_of("unix:///run/x.sock") is None
    assert host_of("127.0.0.1:x") == "127.0.0.1:x"  # malformed: judged whole (not loopback)
    with pytest.raises(ValueError):
        parse_endpoint("a:b:2379")
