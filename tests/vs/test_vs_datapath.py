"""The eBPF datapath end to end: real programs on real taps, guests bridged into namespaces.

Every "cannot reach" assertion comes with a positive control showing the target is up and
reachable by someone who may reach it, and with the drop counter that explains it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time

import pytest

from services.vs.counters import DropReason
from services.vs.policy import NetworkPolicy, PolicyError
from testkit.vs_lab import (
    INET_IP,
    LAN_IP,
    META_IP,
    NODE_INET_IP,
    NODE_LAN_IP,
    NODE_META_IP,
    icmp_echo,
    ns_socket,
    sh,
    tcp_reachable,
    tcp_request,
    udp_request,
)
from tests.vs.conftest import needs_root

pytestmark = [needs_root, pytest.mark.timeout(180)]


def drops(node, sid, reason: DropReason) -> int:
    return dict(node.stats([sid]))[sid].drop_count(reason)


def test_egress_reaches_internet_through_nat(lab, node, guest_endpoint):
    srv = lab.server("inet", "0.0.0.0", 8080)
    sb = node.allocate("sbx-a")
    g = guest_endpoint(sb)

    reply = tcp_request(g.ns, INET_IP, 8080, b"hello")
    assert reply.startswith(b"inet|") and reply.endswith(b"|hello")
    peer_ip, peer_port = reply.split(b"|")[1].decode().split(":")
    # The internet host sees the node's uplink address, with a port from the NAT range.
    assert peer_ip == NODE_INET_IP
    assert node.settings.nat_port_lo <= int(peer_port) <= node.settings.nat_port_hi

    dgram = udp_request(g.ns, INET_IP, 8080, b"dgram")
    assert dgram is not None and dgram.endswith(b"|dgram")
    c = dict(node.stats([sb.sandbox_id]))[sb.sandbox_id]
    assert c.egress_packets > 0 and c.ingress_packets > 0 and c.egress_bytes > 0 and c.ingress_bytes > 0
    assert srv.peers


def test_guest_arp_for_gateway_is_answered_with_gateway_mac(lab, node, guest_endpoint):
    lab.server("inet", "0.0.0.0", 8080)
    sb = node.allocate("sbx-arp")
    g = guest_endpoint(sb)
    assert tcp_reachable(g.ns, INET_IP, 8080)
    neigh = sh("ip", "-n", g.ns, "neigh", "show", sb.guest.gateway_ip).stdout
    assert sb.guest.gateway_mac in neigh, neigh


def test_sandboxes_cannot_reach_each_other(lab, node, guest_endpoint):
    a = node.allocate("sbx-a", NetworkPolicy(exposed_ports=(9000,)))
    b = node.allocate("sbx-b", NetworkPolicy(exposed_ports=(9000,)))
    ga, gb = guest_endpoint(a), guest_endpoint(b)
    lab.server(ga.ns.split("-")[-1], "0.0.0.0", 9000, "A")
    lab.server(gb.ns.split("-")[-1], "0.0.0.0", 9000, "B")
    proxy = str(a.proxy_address)

    # Positive control: both guest servers are up (the proxy reaches them).
    assert tcp_request(lab.node, str(b.address), 9000, b"x", bind=proxy).startswith(b"B|")
    assert tcp_request(lab.node, str(a.address), 9000, b"x", bind=proxy).startswith(b"A|")

    before = drops(node, "sbx-a", DropReason.SANDBOX)
    assert not tcp_reachable(ga.ns, str(b.address), 9000)
    assert not tcp_reachable(gb.ns, str(a.address), 9000)
    assert udp_request(ga.ns, str(b.address), 9000) is None
    assert drops(node, "sbx-a", DropReason.SANDBOX) > before
    assert drops(node, "sbx-b", DropReason.SANDBOX) > 0


def test_sandbox_cannot_reach_the_node(lab, node, guest_endpoint):
    # "Node services": listeners on every node address, as etcd/api/cubelet would be.
    lab.server("node", "0.0.0.0", 2379, "etcd")
    sb = node.allocate("sbx-a")
    g = guest_endpoint(sb)
    proxy = str(sb.proxy_address)
    # Positive control: the service answers on each of these addresses from inside the node.
    for addr in (NODE_INET_IP, NODE_LAN_IP, NODE_META_IP, proxy):
        assert tcp_reachable(lab.node, addr, 2379), addr
    # Positive control: the guest does have egress.
    lab.server("inet", "0.0.0.0", 8080)
    assert tcp_reachable(g.ns, INET_IP, 8080)

    for addr in (NODE_INET_IP, NODE_LAN_IP, NODE_META_IP, proxy, sb.guest.gateway_ip, "203.0.113.255"):
        assert not tcp_reachable(g.ns, addr, 2379, timeout=0.7), addr
    c = dict(node.stats(["sbx-a"]))["sbx-a"]
    assert c.drop_count(DropReason.NODE) > 0  # node addresses, proxy address, broadcast
    assert c.drop_count(DropReason.INFRA) > 0  # gateway (link-local) and the 169.254.169.1 link


def test_sandbox_cannot_open_connection_to_proxy_address_even_from_exposed_port(lab, node, guest_endpoint):
    lab.server("node", "0.0.0.0", 2379, "etcd")
    lab.server("inet", "0.0.0.0", 8080)
    sb = node.allocate("sbx-a", NetworkPolicy(exposed_ports=(9000,)))
    g = guest_endpoint(sb)
    assert tcp_reachable(g.ns, INET_IP, 8080, timeout=3)  # control: the guest's link works
    s = ns_socket(g.ns)
    s.settimeout(1.5)
    s.bind(("0.0.0.0", 9000))  # pretend to be a reply from the exposed port
    with pytest.raises(OSError):
        s.connect((str(sb.proxy_address), 2379))
    s.close()
    assert drops(node, "sbx-a", DropReason.NODE) > 0


def test_link_local_and_private_ranges_denied_by_default(lab, node, guest_endpoint):
    lab.server("meta", "0.0.0.0", 80, "metadata")
    lab.server("lan", "0.0.0.0", 80, "lan")
    # A sandbox's own allow_out does not override the node's infrastructure rules.
    sb = node.allocate("sbx-a", NetworkPolicy(allow_out=("10.0.0.0/8", "169.254.0.0/16")))
    g = guest_endpoint(sb)
    # Positive controls: both hosts answer the node.
    assert tcp_reachable(lab.node, META_IP, 80)
    assert tcp_reachable(lab.node, LAN_IP, 80)

    assert not tcp_reachable(g.ns, META_IP, 80)
    assert not tcp_reachable(g.ns, LAN_IP, 80)
    assert udp_request(g.ns, META_IP, 80) is None
    assert drops(node, "sbx-a", DropReason.INFRA) >= 3


def test_operator_allowed_cidr_reaches_lan_but_never_metadata(lab, make_node, guest_endpoint):
    lab.server("meta", "0.0.0.0", 80, "metadata")
    lab.server("lan", "0.0.0.0", 80, "lan")
    node = make_node(allow_cidrs=("10.77.0.0/24",))
    sb = node.allocate("sbx-a")
    g = guest_endpoint(sb)
    reply = tcp_request(g.ns, LAN_IP, 80, b"hi")
    assert reply.startswith(b"lan|" + NODE_LAN_IP.encode())  # NATed to the node's LAN address
    assert not tcp_reachable(g.ns, META_IP, 80)
    # The sandbox's own deny list still applies inside an operator-allowed range.
    node.update_policy("sbx-a", NetworkPolicy(deny_out=("10.77.0.10",)))
    assert not tcp_reachable(g.ns, LAN_IP, 80)
    assert drops(node, "sbx-a", DropReason.POLICY) > 0


def test_operator_cannot_allow_metadata(make_node):
    with pytest.raises(PolicyError, match="always denied"):
        make_node(allow_cidrs=("169.254.169.254/32",))


def test_allow_internet_access_false(lab, node, guest_endpoint):
    lab.server("inet", "0.0.0.0", 8080)
    on = node.allocate("sbx-on")
    off = node.allocate("sbx-off", NetworkPolicy(allow_internet_access=False))
    g_on, g_off = guest_endpoint(on), guest_endpoint(off)
    assert tcp_reachable(g_on.ns, INET_IP, 8080)
    assert not tcp_reachable(g_off.ns, INET_IP, 8080)
    assert udp_request(g_off.ns, INET_IP, 8080) is None
    assert drops(node, "sbx-off", DropReason.POLICY) > 0
    assert drops(node, "sbx-on", DropReason.POLICY) == 0


def test_deny_out_and_allow_out_punches_through(lab, node, guest_endpoint):
    # A second "internet" address on the same host.
    sh("ip", "-n", lab.ns("inet"), "addr", "add", "203.0.113.11/24", "dev", "eth0")
    lab.server("inet", "0.0.0.0", 8080)
    sb = node.allocate("sbx-a", NetworkPolicy(deny_out=("203.0.113.0/24",)))
    g = guest_endpoint(sb)
    assert not tcp_reachable(g.ns, INET_IP, 8080)
    assert not tcp_reachable(g.ns, "203.0.113.11", 8080)

    # E2B: allow wins over deny whatever the prefix lengths (here a /32 allow in a /0 deny).
    node.update_policy("sbx-a", NetworkPolicy(allow_out=(INET_IP,), deny_out=("0.0.0.0/0",)))
    assert tcp_reachable(g.ns, INET_IP, 8080)
    assert not tcp_reachable(g.ns, "203.0.113.11", 8080)

    # Also when the deny is *more* specific than the allow.
    node.update_policy("sbx-a", NetworkPolicy(allow_out=("203.0.0.0/8",), deny_out=("203.0.113.11/32",)))
    assert tcp_reachable(g.ns, "203.0.113.11", 8080)

    # allow_out punches through allow_internet_access=false too.
    node.update_policy("sbx-a", NetworkPolicy(allow_internet_access=False, allow_out=("203.0.113.11",)))
    assert tcp_reachable(g.ns, "203.0.113.11", 8080)
    assert not tcp_reachable(g.ns, INET_IP, 8080)


def test_policy_change_takes_effect_on_live_sandbox_within_a_second(lab, node, guest_endpoint):
    lab.server("inet", "0.0.0.0", 8081, raw_echo=True)
    sb = node.allocate("sbx-a")
    g = guest_endpoint(sb)
    # A long-lived connection, established while allowed.
    conn = ns_socket(g.ns)
    conn.settimeout(2)
    conn.connect((INET_IP, 8081))
    conn.sendall(b"one")
    assert conn.recv(16) == b"one"

    t0 = time.monotonic()
    node.update_policy("sbx-a", NetworkPolicy(allow_internet_access=False))
    # New connections fail and the established one goes silent, well within a second.
    conn.settimeout(0.5)
    conn.sendall(b"two")
    with pytest.raises(socket.timeout):
        conn.recv(16)
    assert not tcp_reachable(g.ns, INET_IP, 8081, timeout=0.3)
    assert time.monotonic() - t0 < 1.5  # both probes included; the switch itself is one map write

    t1 = time.monotonic()
    node.update_policy("sbx-a", NetworkPolicy(allow_internet_access=True))
    ok = False
    while time.monotonic() - t1 < 1.0:
        if tcp_reachable(g.ns, INET_IP, 8081, timeout=0.3):
            ok = True
            break
    assert ok, "re-allowed egress did not work within a second"
    conn.close()


def test_only_the_proxy_reaches_exposed_ports(lab, node, guest_endpoint):
    sb = node.allocate("sbx-a", NetworkPolicy(exposed_ports=(9000,)))
    g = guest_endpoint(sb)
    gname = g.ns.split("-")[-1]
    lab.server(gname, "0.0.0.0", 9000, "exposed")
    lab.server(gname, "0.0.0.0", 9001, "hidden")
    addr, proxy = str(sb.address), str(sb.proxy_address)

    assert tcp_request(lab.node, addr, 9000, b"x", bind=proxy).startswith(b"exposed|" + proxy.encode())
    assert not tcp_reachable(lab.node, addr, 9001, bind=proxy)            # not exposed
    assert not tcp_reachable(lab.node, addr, 9000)                        # node, not the proxy address
    assert not tcp_reachable(lab.node, addr, 9000, bind=NODE_INET_IP)
    # From outside the node (a host that routes the pool to the node): nothing.
    sh("ip", "-n", lab.ns("inet"), "route", "add", "198.19.0.0/16", "via", NODE_INET_IP)
    assert not tcp_reachable(lab.ns("inet"), addr, 9000)
    assert drops(node, "sbx-a", DropReason.INGRESS) >= 4

    # Exposing a port is a live policy update.
    node.update_policy("sbx-a", NetworkPolicy(exposed_ports=(9000, 9001)))
    assert tcp_request(lab.node, addr, 9001, b"x", bind=proxy).startswith(b"hidden|")
    node.update_policy("sbx-a", NetworkPolicy(exposed_ports=()))
    assert not tcp_reachable(lab.node, addr, 9000, bind=proxy)
    node.update_policy("sbx-a", NetworkPolicy(expose_all_ports=True))
    assert tcp_reachable(lab.node, addr, 9001, bind=proxy)
    assert not tcp_reachable(lab.node, addr, 9001)


def test_proxy_udp_to_exposed_port(lab, node, guest_endpoint):
    sb = node.allocate("sbx-a", NetworkPolicy(exposed_ports=(9000,)))
    g = guest_endpoint(sb)
    lab.server(g.ns.split("-")[-1], "0.0.0.0", 9000, "udp")
    s = ns_socket(lab.node, type_=socket.SOCK_DGRAM)
    s.settimeout(1.5)
    s.bind((str(sb.proxy_address), 0))
    s.sendto(b"d", (str(sb.address), 9000))
    assert s.recvfrom(1024)[0].startswith(b"udp|" + str(sb.proxy_address).encode())
    s.close()


def test_clones_with_same_guest_ip_do_not_mix_replies(lab, node, guest_endpoint):
    lab.server("inet", "0.0.0.0", 8080)
    sbs = [node.allocate(f"clone-{i}") for i in range(2)]
    guests = [guest_endpoint(sb) for sb in sbs]
    assert {sb.guest.ip for sb in sbs} == {"169.254.0.21"} and len({sb.address for sb in sbs}) == 2

    results: dict[str, list[bytes]] = {sb.sandbox_id: [] for sb in sbs}
    errors: list[str] = []
    barrier = threading.Barrier(2)

    def run(sb, g):
        barrier.wait()
        for i in range(15):
            token = f"{sb.sandbox_id}-{i}".encode()
            try:
                # Same guest IP and (often) the same guest source port: only the NAT tells them apart.
                results[sb.sandbox_id].append(tcp_request(g.ns, INET_IP, 8080, token, timeout=3))
            except OSError as e:
                errors.append(f"{sb.sandbox_id}: {e!r}")

    threads = [threading.Thread(target=run, args=(sb, g)) for sb, g in zip(sbs, guests, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    ports = set()
    for sb in sbs:
        assert len(results[sb.sandbox_id]) == 15
        for i, reply in enumerate(results[sb.sandbox_id]):
            assert reply.endswith(f"|{sb.sandbox_id}-{i}".encode()), reply
            ports.add(reply.split(b"|")[1])
    assert len(ports) == 30  # every flow had its own NAT port
    # UDP at the same time from the same guest port.
    for sb, g in zip(sbs, guests, strict=True):
        s = ns_socket(g.ns, type_=socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 5353))
        s.settimeout(2)
        s.sendto(sb.sandbox_id.encode(), (INET_IP, 8080))
        assert s.recvfrom(1024)[0].endswith(sb.sandbox_id.encode())
        s.close()


def test_spoofed_source_is_dropped(lab, node, guest_endpoint):
    lab.server("inet", "0.0.0.0", 8080)
    sb = node.allocate("sbx-a")
    g = guest_endpoint(sb)
    assert tcp_reachable(g.ns, INET_IP, 8080)
    sh("ip", "-n", g.ns, "addr", "add", "169.254.0.22/32", "dev", "eth0")  # claim another address
    assert not tcp_reachable(g.ns, INET_IP, 8080, bind="169.254.0.22")
    assert drops(node, "sbx-a", DropReason.SPOOF) > 0


def test_ipv6_from_guest_is_dropped(lab, node, guest_endpoint):
    sb = node.allocate("sbx-a")
    g = guest_endpoint(sb)
    # The guest's kernel sends IPv6 (router/neighbour solicitations, MLD) on its own; make sure.
    s = ns_socket(g.ns, family=socket.AF_INET6, type_=socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", ("ff02::1%eth0", 9))
    except OSError:
        pass
    s.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and drops(node, "sbx-a", DropReason.NOT_IPV4) == 0:
        time.sleep(0.1)
    assert drops(node, "sbx-a", DropReason.NOT_IPV4) > 0


def test_icmp_echo_through_nat(lab, node, guest_endpoint):
    sb = node.allocate("sbx-a")
    g = guest_endpoint(sb)
    assert icmp_echo(g.ns, INET_IP)
    node.update_policy("sbx-a", NetworkPolicy(deny_out=(INET_IP,)))
    assert not icmp_echo(g.ns, INET_IP)
    assert drops(node, "sbx-a", DropReason.POLICY) > 0


def test_release_removes_tap_route_and_address_is_reused_later(lab, node, guest_endpoint):
    a = node.allocate("sbx-a")
    routes = sh("ip", "-n", lab.node, "route", "show", str(a.address)).stdout
    assert a.tap in routes
    node.release("sbx-a")
    assert a.tap not in sh("ip", "-n", lab.node, "-o", "link").stdout
    assert not sh("ip", "-n", lab.node, "route", "show", str(a.address)).stdout.strip()
    b = node.allocate("sbx-b")
    assert b.address != a.address  # round-robin: a just-released address is not handed out first
    with pytest.raises(KeyError):
        node.release("sbx-a")


def test_restart_readopts_the_datapath(lab, make_node, guest_endpoint):
    lab.server("inet", "0.0.0.0", 8080)
    node = make_node()
    sb = node.allocate("sbx-a", NetworkPolicy(exposed_ports=(9000,), deny_out=("203.0.113.99",)))
    g = guest_endpoint(sb)
    assert tcp_reachable(g.ns, INET_IP, 8080)
    maps_before = node.datapath.loaded_ids().maps
    node.stop()  # CubeVS exits; the VM (bridge) and the datapath stay

    # Traffic keeps flowing while CubeVS is down.
    assert tcp_reachable(g.ns, INET_IP, 8080)

    node2 = make_node()
    assert node2.datapath.loaded_ids().maps == maps_before  # same pinned maps, re-adopted
    assert [n.sandbox_id for n in node2.list()] == ["sbx-a"]
    assert tcp_reachable(g.ns, INET_IP, 8080)
    node2.update_policy("sbx-a", NetworkPolicy(allow_internet_access=False))
    assert not tcp_reachable(g.ns, INET_IP, 8080)
    node2.release("sbx-a")


def test_reconcile_releases_dead_sandboxes_and_leftovers(lab, node):
    node.allocate("sbx-live")
    node.allocate("sbx-dead")
    # A tap left by a crash (our prefix, no record).
    stray = node.taps.create()
    report = node.reconcile(["sbx-live", "sbx-unknown"])
    assert report.released == ["sbx-dead"]
    assert report.missing == ["sbx-unknown"]
    assert stray.name in report.removed_taps
    assert [n.sandbox_id for n in node.list()] == ["sbx-live"]
    assert stray.name not in sh("ip", "-n", lab.node, "-o", "link").stdout
    # A second pass finds nothing.
    again = node.reconcile(["sbx-live"])
    assert not again.released and not again.removed_taps and again.removed_entries == 0


def test_teardown_leaves_no_program_map_pin_or_tap(lab, make_node, guest_endpoint):
    from services.vs import libbpf
    node = make_node()
    sb = node.allocate("sbx-a")
    guest_endpoint(sb)
    ids = node.datapath.loaded_ids()
    pin_dir = node.settings.pin_dir
    assert pin_dir.exists() and libbpf.prog_exists(ids.programs["cvs_tap_in"])
    assert node.datapath.attached_programs(
        int(sh("ip", "-n", lab.node, "-o", "link", "show", "up-inet").stdout.split(":")[0])) == {
        "ingress": "cvs_up_in", "egress": "cvs_up_out"}
    node.teardown()
    assert not pin_dir.exists()
    assert not [line for line in sh("ip", "-n", lab.node, "-o", "link").stdout.splitlines() if ": cvs" in line]
    assert "198.19.0.1" not in sh("ip", "-n", lab.node, "addr", "show", "lo").stdout
    assert "clsact" not in sh("tc", "-n", lab.node, "qdisc", "show", "dev", "up-inet").stdout
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(libbpf.map_exists(i) for i in ids.maps.values()):
        time.sleep(0.05)
    assert not any(libbpf.prog_exists(i) for i in ids.programs.values())
    assert not any(libbpf.map_exists(i) for i in ids.maps.values())


def test_unknown_sandbox_and_bad_input(node):
    from services.vs.guest import GuestNetwork
    from services.vs.network import AlreadyExists, InvalidArgument, NotFound

    with pytest.raises(NotFound, match="no network"):
        node.update_policy("nope", NetworkPolicy())
    with pytest.raises(NotFound):
        node.stats(["nope"])
    with pytest.raises(PolicyError, match="not a valid IP address or CIDR"):
        node.allocate("sbx-a", NetworkPolicy(allow_out=("10.0.0.0/33",)))
    with pytest.raises(PolicyError, match="domain name"):
        node.allocate("sbx-a", NetworkPolicy(allow_out=("example.com",)))
    with pytest.raises(PolicyError, match="at most 128"):
        node.allocate("sbx-a", NetworkPolicy(deny_out=tuple(f"8.8.{i // 256}.{i % 256}" for i in range(129))))
    with pytest.raises(PolicyError, match="port"):
        node.allocate("sbx-a", NetworkPolicy(exposed_ports=(70000,)))
    with pytest.raises(InvalidArgument, match="sandbox_id"):
        node.allocate("bad id/with slash")
    with pytest.raises(InvalidArgument, match="gateway"):
        node.allocate("sbx-a", guest=GuestNetwork(gateway_ip="10.0.0.1"))
    # Nothing leaked from the failed calls: the next allocation gets the first address.
    sb = node.allocate("sbx-a")
    assert sb.address == ipaddress.IPv4Address("198.19.0.2")
    with pytest.raises(AlreadyExists):
        node.allocate("sbx-a")
    with pytest.raises(PolicyError):
        node.update_policy("sbx-a", NetworkPolicy(deny_out=("300.1.1.1",)))
    assert node.get("sbx-a").policy == NetworkPolicy()  # the bad update changed nothing


def test_tcp_mss_is_clamped(lab, make_node, guest_endpoint):
    # Guests keep their template's MTU (1500) while the uplink or the path behind it may carry
    # less; the datapath lowers the MSS option of SYNs both ways so TCP never sends more.
    srv = lab.server("inet", "0.0.0.0", 8080)
    big = os.urandom(100_000)

    unclamped = make_node(mss_clamp=-1)
    assert unclamped.status()["mss_clamp"] == 0
    g = guest_endpoint(unclamped.allocate("sbx-a"))
    assert tcp_request(g.ns, INET_IP, 8080, big, timeout=10).endswith(big)
    assert srv.mss[-1] > 1400  # the control: the guest announces what its 1500 MTU allows
    lab.close_guest(g)
    unclamped.teardown()

    # Auto mode: the smallest uplink MTU - 40.
    sh("ip", "-n", lab.node, "link", "set", "up-meta", "mtu", "1400")
    auto = make_node()
    assert auto.status()["mss_clamp"] == 1360
    g = guest_endpoint(auto.allocate("sbx-b"))
    assert tcp_request(g.ns, INET_IP, 8080, big, timeout=10).endswith(big)
    assert srv.mss[-1] <= 1360
    lab.close_guest(g)
    auto.teardown()

    node = make_node(mss_clamp=1200)
    sb = node.allocate("sbx-c", NetworkPolicy(exposed_ports=(9000,)))
    g = guest_endpoint(sb)
    gsrv = lab.server(g.ns.split("-")[-1], "0.0.0.0", 9000, "guest")
    assert tcp_request(g.ns, INET_IP, 8080, big, timeout=10).endswith(big)
    assert srv.mss[-1] <= 1200
    # The SYN towards the guest (from the proxy) is clamped as well.
    assert tcp_request(lab.node, str(sb.address), 9000, big, timeout=10, bind=str(sb.proxy_address)).endswith(big)
    assert gsrv.mss[-1] <= 1200


def test_checksums_without_offload(lab, node, guest_endpoint):
    # Frames with complete checksums (no virtio-net offload) must come out right after NAT too.
    lab.server("inet", "0.0.0.0", 8080)
    sb = node.allocate("sbx-a", NetworkPolicy(exposed_ports=(9000,)))
    g = guest_endpoint(sb, offload=False)
    lab.server(g.ns.split("-")[-1], "0.0.0.0", 9000, "guest")
    payload = os.urandom(100_000)
    assert tcp_request(g.ns, INET_IP, 8080, payload, timeout=10).endswith(payload)
    echoed = udp_request(g.ns, INET_IP, 8080, b"u" * 1000)
    assert echoed is not None and echoed.endswith(b"u" * 1000)
    assert tcp_request(lab.node, str(sb.address), 9000, payload, timeout=10,
                       bind=str(sb.proxy_address)).endswith(payload)
    assert icmp_echo(g.ns, INET_IP)
