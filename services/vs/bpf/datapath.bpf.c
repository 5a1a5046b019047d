// SPDX-License-Identifier: GPL-2.0
/*
 * CubeVS datapath: per-sandbox isolation, egress policy and NAT for Cube microVMs.
 *
 * Four tc (clsact, direct-action) programs share the maps below:
 *
 *   cvs_tap_in   tap ingress  = frames the guest sends.  ARP responder for the gateway,
 *                anti-spoofing, isolation (node, other sandboxes, infra CIDRs), per-sandbox
 *                egress policy, then stateless 1:1 SNAT guest-ip -> the sandbox's unique
 *                host-side address, so that clones with the same guest IP become distinct.
 *   cvs_tap_out  tap egress   = frames toward the guest.  Only the proxy (to exposed ports)
 *                and replies to the sandbox's own NATed flows pass; 1:1 DNAT back to the
 *                fixed guest IP.
 *   cvs_up_out   uplink egress: SNAT sandbox addresses to the uplink's address with a port
 *                chosen here (NAPT), state in LRU maps.
 *   cvs_up_in    uplink ingress: reverse NAPT for replies; everything else is left alone.
 *
 * Everything the programs need to know comes from maps that Python fills (no constants about
 * addresses or MACs are compiled in): the guest identity is a parameter of each sandbox.
 *
 * Only uapi and libbpf headers are used, so no kernel headers are needed on a node.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif

/* Keep in sync with services/vs/counters.py (DropReason). */
enum drop_reason {
	DROP_UNCONFIGURED = 0,	/* tap has no sandbox bound (pool tap, or being released) */
	DROP_SPOOF,		/* source MAC/IP is not the sandbox's guest identity */
	DROP_NOT_IPV4,		/* IPv6 and other ethertypes: the guest has IPv4 only */
	DROP_ARP,		/* ARP that is not a request for the gateway */
	DROP_MALFORMED,		/* truncated headers, IP options */
	DROP_FRAGMENT,		/* IP fragments cannot be policed or NATed per port */
	DROP_NODE,		/* destination is an address of the node itself */
	DROP_SANDBOX,		/* destination is another sandbox */
	DROP_INFRA,		/* link-local, private, loopback... (operator deny list) */
	DROP_POLICY,		/* sandbox's own deny_out / allow_internet_access=false */
	DROP_PROTO,		/* protocol not supported (not TCP/UDP/ICMP echo) */
	DROP_NO_ROUTE,		/* no forwarding route for the destination */
	DROP_INGRESS,		/* to the sandbox: not the proxy on an exposed port, not a reply */
	DROP_NAT,		/* no free NAT port */
	DROP_MAX = 16,
};

#define CFG_ALL_PORTS 1u

struct sbx_cfg {		/* key: tap ifindex */
	__u32 slot;		/* index into cvs_stats */
	__u32 policy_id;	/* key prefix in cvs_allow/cvs_deny/cvs_ports */
	__be32 sbx_addr;	/* unique host-side address of the sandbox */
	__be32 guest_ip;
	__be32 gw_ip;
	__u32 flags;
	__u8 guest_mac[6];
	__u8 gw_mac[6];
};

struct node_cfg {		/* single entry */
	__be32 pool_net;	/* pool CIDR: all sandbox addresses and the proxy address */
	__be32 pool_mask;
	__be32 proxy_addr;	/* the only source that may reach exposed ports */
	__u16 nat_port_lo;	/* host order */
	__u16 nat_port_hi;
	__u16 mss_max;		/* clamp TCP MSS of SYNs both ways to this (0: off) */
	__u16 pad;
	__u32 pad2;
	__u64 proxy_ct_ttl_ns;	/* idle time after which a proxy flow is forgotten */
};

struct uplink_cfg {		/* key: uplink ifindex */
	__be32 nat_ip;
};

struct lpm4_key {		/* infra deny list */
	__u32 prefixlen;
	__be32 addr;
};

struct lpm_pol_key {		/* per-policy CIDRs: prefixlen covers 32 bits of policy id + CIDR */
	__u32 prefixlen;
	__be32 policy_id;	/* big endian so that the LPM byte-wise match is an exact match */
	__be32 addr;
};

struct port_key {
	__u32 policy_id;
	__u16 port;		/* host order */
	__u16 pad;
};

struct proxy_ct_key {		/* a connection the proxy opened to a sandbox */
	__u32 ifindex;
	__be16 guest_port;
	__be16 proxy_port;
	__u8 proto;
	__u8 pad[3];
};

struct flow4 {			/* original (pre-NAPT) tuple, as the sandbox's address sends it */
	__be32 src;
	__be32 dst;
	__be16 sport;		/* ICMP echo: identifier */
	__be16 dport;		/* ICMP echo: 0 */
	__u8 proto;
	__u8 pad[3];
};

struct nat_out_val {
	__be32 nat_ip;
	__be16 nat_port;
	__u16 pad;
};

struct nat_in_key {		/* as replies arrive on the uplink */
	__be32 nat_ip;
	__be32 remote;
	__be16 nat_port;
	__be16 remote_port;
	__u8 proto;
	__u8 pad[3];
};

struct nat_in_val {
	__be32 orig_src;
	__be16 orig_sport;
	__u16 pad;
};

struct sbx_stats {
	__u64 egress_bytes;	/* sandbox -> world, passed */
	__u64 egress_packets;
	__u64 ingress_bytes;	/* world -> sandbox, passed */
	__u64 ingress_packets;
	__u64 drops[DROP_MAX];
};

#define MAX_SANDBOXES 4096
#define MAX_POLICY_ENTRIES 262144
#define MAX_FLOWS 65536

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SANDBOXES);
	__type(key, __u32);
	__type(value, struct sbx_cfg);
} cvs_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SANDBOXES);
	__type(key, __be32);
	__type(value, __u32);	/* tap ifindex */
} cvs_addr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_cfg);
} cvs_node SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct uplink_cfg);
} cvs_uplink SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm4_key);
	__type(value, __u8);	/* 1 allow (operator exception), 2 deny */
} cvs_infra SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_POLICY_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_pol_key);
	__type(value, __u8);
} cvs_allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_POLICY_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_pol_key);
	__type(value, __u8);
} cvs_deny SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_POLICY_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct port_key);
	__type(value, __u8);
} cvs_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct proxy_ct_key);
	__type(value, __u64);	/* last seen, ktime ns */
} cvs_proxy_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct flow4);
	__type(value, struct nat_out_val);
} cvs_nat_out SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct nat_in_key);
	__type(value, struct nat_in_val);
} cvs_nat_in SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SANDBOXES);
	__type(key, __u32);
	__type(value, struct sbx_stats);
} cvs_stats SEC(".maps");

#define IP_CSUM_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, daddr))
#define L4_OFF (ETH_HLEN + sizeof(struct iphdr))
#define TCP_CSUM_OFF (L4_OFF + __builtin_offsetof(struct tcphdr, check))
#define UDP_CSUM_OFF (L4_OFF + __builtin_offsetof(struct udphdr, check))
#define ICMP_CSUM_OFF (L4_OFF + __builtin_offsetof(struct icmphdr, checksum))
#define ICMP_ID_OFF (L4_OFF + __builtin_offsetof(struct icmphdr, un.echo.id))

/* linux/if_arp.h and linux/icmp.h drag in libc headers; the little we need of them is
 * stable wire format. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
	} un;
};

#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arphdr_ {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

/* ARP payload for Ethernet/IPv4. */
struct arp_eth_ipv4 {
	struct arphdr_ hdr;
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

static __always_inline int drop(__u32 slot, enum drop_reason why)
{
	struct sbx_stats *st = bpf_map_lookup_elem(&cvs_stats, &slot);

	if (st && why < DROP_MAX)
		st->drops[why]++;
	return TC_ACT_SHOT;
}

static __always_inline void count(__u32 slot, __u64 len, int egress)
{
	struct sbx_stats *st = bpf_map_lookup_elem(&cvs_stats, &slot);

	if (!st)
		return;
	if (egress) {
		st->egress_bytes += len;
		st->egress_packets++;
	} else {
		st->ingress_bytes += len;
		st->ingress_packets++;
	}
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return ((const __u16 *)a)[0] == ((const __u16 *)b)[0] &&
	       ((const __u16 *)a)[1] == ((const __u16 *)b)[1] &&
	       ((const __u16 *)a)[2] == ((const __u16 *)b)[2];
}

static __always_inline struct node_cfg *node_cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&cvs_node, &zero);
}

/* Ports of an IPv4 packet (ihl == 5 already checked). ICMP echo uses the identifier as the
 * "source port" and 0 as the destination port, so NAT and conntrack treat it like a flow. */
static __always_inline int l4_ports(struct __sk_buff *skb, __u8 proto, int want_echo_reply,
				    __be16 *sport, __be16 *dport, __u8 *tcp_flags)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	void *l4 = data + L4_OFF;

	*tcp_flags = 0;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return -1;
		*sport = th->source;
		*dport = th->dest;
		*tcp_flags = ((__u8 *)th)[13];
		return 0;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return -1;
		*sport = uh->source;
		*dport = uh->dest;
		return 0;
	}
	if (proto == IPPROTO_ICMP) {
		struct icmphdr *ih = l4;

		if ((void *)(ih + 1) > data_end)
			return -1;
		if (ih->type != (want_echo_reply ? ICMP_ECHOREPLY : ICMP_ECHO))
			return -2;
		*sport = ih->un.echo.id;
		*dport = 0;
		return 0;
	}
	return -2;
}

/* Rewrite the source or destination IPv4 address, fixing the IP and L4 checksums. */
static __always_inline int rewrite_addr(struct __sk_buff *skb, __u8 proto, int is_src,
					__be32 old, __be32 new)
{
	int off = is_src ? IP_SRC_OFF : IP_DST_OFF;

	if (old == new)
		return 0;
	if (proto == IPPROTO_TCP)
		bpf_l4_csum_replace(skb, TCP_CSUM_OFF, old, new, BPF_F_PSEUDO_HDR | 4);
	else if (proto == IPPROTO_UDP)
		bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old, new,
				    BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4);
	/* ICMP checksums do not cover a pseudo header. */
	bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, new, 4);
	return bpf_skb_store_bytes(skb, off, &new, 4, 0);
}

/* Rewrite the source or destination port (ICMP echo: the identifier). */
static __always_inline int rewrite_port(struct __sk_buff *skb, __u8 proto, int is_src,
					__be16 old, __be16 new)
{
	int off, csum_off, flags = 2;

	if (old == new)
		return 0;
	if (proto == IPPROTO_TCP) {
		off = L4_OFF + (is_src ? 0 : 2);
		csum_off = TCP_CSUM_OFF;
	} else if (proto == IPPROTO_UDP) {
		off = L4_OFF + (is_src ? 0 : 2);
		csum_off = UDP_CSUM_OFF;
		flags |= BPF_F_MARK_MANGLED_0;
	} else {
		off = ICMP_ID_OFF;
		csum_off = ICMP_CSUM_OFF;
	}
	bpf_l4_csum_replace(skb, csum_off, old, new, flags);
	return bpf_skb_store_bytes(skb, off, &new, 2, 0);
}

/* Clamp the MSS option of a TCP SYN (ihl == 5 checked by the caller). Guests keep the MTU of
 * their template (1500) while an uplink may be smaller (this kind of VM: 1400); the node
 * would answer their full-size segments with ICMP "fragmentation needed", which we do not
 * translate back into the guest, so TCP would stall. Only the first option is looked at:
 * every mainstream stack puts MSS first in a SYN. */
static __always_inline void clamp_mss(struct __sk_buff *skb, __u16 mss_max)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct tcphdr *th = data + L4_OFF;
	__u8 *opt = (void *)(th + 1);
	__be16 old, new;

	if (!mss_max || (void *)(opt + 4) > data_end)
		return;
	if (!th->syn || th->doff < 6 || opt[0] != 2 || opt[1] != 4)
		return;
	old = *(__be16 *)(opt + 2);
	if (bpf_ntohs(old) <= mss_max)
		return;
	new = bpf_htons(mss_max);
	bpf_l4_csum_replace(skb, TCP_CSUM_OFF, old, new, 2);
	bpf_skb_store_bytes(skb, L4_OFF + sizeof(struct tcphdr) + 2, &new, 2, 0);
}

/* Answer the guest's ARP request for its gateway from here, with the gateway MAC the
 * template was built with: no address on the tap, no proxy_arp, and the ARP cache that a
 * snapshot carries stays valid in every clone. */
static __always_inline int arp_reply(struct __sk_buff *skb, struct sbx_cfg *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_eth_ipv4 *arp = (void *)(eth + 1);
	__be32 sip;

	if ((void *)(arp + 1) > data_end)
		return drop(cfg->slot, DROP_ARP);
	if (arp->hdr.ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->hdr.ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->hdr.ar_hln != ETH_ALEN || arp->hdr.ar_pln != 4 ||
	    arp->hdr.ar_op != bpf_htons(ARPOP_REQUEST) || arp->tip != cfg->gw_ip ||
	    arp->sip != cfg->guest_ip || !mac_eq(arp->sha, cfg->guest_mac))
		return drop(cfg->slot, DROP_ARP);

	sip = arp->sip;
	__builtin_memcpy(eth->h_dest, arp->sha, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->gw_mac, ETH_ALEN);
	arp->hdr.ar_op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(arp->tha, arp->sha, ETH_ALEN);
	arp->tip = sip;
	__builtin_memcpy(arp->sha, cfg->gw_mac, ETH_ALEN);
	arp->sip = cfg->gw_ip;
	/* Back out of the same tap, i.e. to the guest. */
	return bpf_redirect(skb->ifindex, 0);
}

/* Frames sent by the guest. */
SEC("tc")
int cvs_tap_in(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct sbx_cfg *cfg;
	struct node_cfg *node;
	__u32 ifindex = skb->ifindex;
	__be32 dst;
	__be16 sport = 0, dport = 0;
	__u8 proto, tcp_flags = 0;
	int rc;

	cfg = bpf_map_lookup_elem(&cvs_cfg, &ifindex);
	if (!cfg)
		return TC_ACT_SHOT;	/* unbound tap: nothing passes, no stats slot to count in */
	if ((void *)(eth + 1) > data_end)
		return drop(cfg->slot, DROP_MALFORMED);
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return arp_reply(skb, cfg);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return drop(cfg->slot, DROP_NOT_IPV4);
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return drop(cfg->slot, DROP_MALFORMED);
	if (!mac_eq(eth->h_source, cfg->guest_mac) || ip->saddr != cfg->guest_ip)
		return drop(cfg->slot, DROP_SPOOF);
	if (ip->ihl != 5 || ip->version != 4)
		return drop(cfg->slot, DROP_MALFORMED);
	if (ip->frag_off & bpf_htons(0x3fff))	/* MF or a fragment offset */
		return drop(cfg->slot, DROP_FRAGMENT);
	node = node_cfg();
	if (!node)
		return drop(cfg->slot, DROP_UNCONFIGURED);

	dst = ip->daddr;
	proto = ip->protocol;
	rc = l4_ports(skb, proto, 0, &sport, &dport, &tcp_flags);
	if (rc == -1)
		return drop(cfg->slot, DROP_MALFORMED);

	/* The pool holds every sandbox address and the proxy address. Nothing there is
	 * reachable, except the proxy for replies on a connection the proxy opened. */
	if ((dst & node->pool_mask) == node->pool_net) {
		struct proxy_ct_key ck = {};
		__u64 *seen;

		if (dst != node->proxy_addr)
			return drop(cfg->slot, DROP_SANDBOX);
		if (rc != 0 || proto == IPPROTO_ICMP)
			return drop(cfg->slot, DROP_NODE);
		/* A reply never opens a connection. */
		if (proto == IPPROTO_TCP && (tcp_flags & 0x12) == 0x02)
			return drop(cfg->slot, DROP_NODE);
		ck.ifindex = ifindex;
		ck.guest_port = sport;
		ck.proxy_port = dport;
		ck.proto = proto;
		seen = bpf_map_lookup_elem(&cvs_proxy_ct, &ck);
		if (!seen || bpf_ktime_get_ns() - *seen > node->proxy_ct_ttl_ns)
			return drop(cfg->slot, DROP_NODE);
		goto pass;
	}

	if (rc != 0)
		return drop(cfg->slot, DROP_PROTO);

	{
		struct lpm4_key ik = { .prefixlen = 32, .addr = dst };
		__u8 *act = bpf_map_lookup_elem(&cvs_infra, &ik);

		if (act && *act == 2)
			return drop(cfg->slot, DROP_INFRA);
	}

	{
		/* Anything the node would deliver locally (any address on any device, broadcast)
		 * is the node itself, whatever its address: ask the FIB instead of keeping a list. */
		struct bpf_fib_lookup fib = {};
		__u32 *other;

		fib.family = AF_INET;
		fib.ifindex = ifindex;
		fib.ipv4_src = cfg->sbx_addr;
		fib.ipv4_dst = dst;
		fib.l4_protocol = proto;
		fib.sport = sport;
		fib.dport = dport;
		rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
		if (rc == BPF_FIB_LKUP_RET_NOT_FWDED)
			return drop(cfg->slot, DROP_NODE);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
			return drop(cfg->slot, DROP_NO_ROUTE);
		__u32 out = fib.ifindex;
		other = bpf_map_lookup_elem(&cvs_cfg, &out);
		if (other)
			return drop(cfg->slot, DROP_SANDBOX);
	}

	{
		/* E2B semantics: allow_out wins over deny_out, whatever the prefix lengths, so
		 * the two lists live in separate tries. allow_internet_access=false is deny 0/0. */
		struct lpm_pol_key pk = {
			.prefixlen = 64,
			.policy_id = bpf_htonl(cfg->policy_id),
			.addr = dst,
		};

		if (!bpf_map_lookup_elem(&cvs_allow, &pk) && bpf_map_lookup_elem(&cvs_deny, &pk))
			return drop(cfg->slot, DROP_POLICY);
	}

pass:
	count(cfg->slot, skb->len, 1);
	if (proto == IPPROTO_TCP && (tcp_flags & 0x02))
		clamp_mss(skb, node->mss_max);
	if (rewrite_addr(skb, proto, 1, cfg->guest_ip, cfg->sbx_addr))
		return drop(cfg->slot, DROP_MALFORMED);
	return TC_ACT_OK;
}

/* Frames the node sends toward the guest. */
SEC("tc")
int cvs_tap_out(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct sbx_cfg *cfg;
	struct node_cfg *node;
	__u32 ifindex = skb->ifindex;
	__be32 src, dst;
	__be16 sport = 0, dport = 0;
	__u8 proto, tcp_flags = 0;
	int rc;

	cfg = bpf_map_lookup_elem(&cvs_cfg, &ifindex);
	if (!cfg)
		return TC_ACT_SHOT;
	if ((void *)(eth + 1) > data_end)
		return drop(cfg->slot, DROP_MALFORMED);
	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		/* Only the replies cvs_tap_in made. */
		struct arp_eth_ipv4 *arp = (void *)(eth + 1);

		if ((void *)(arp + 1) <= data_end && arp->hdr.ar_op == bpf_htons(ARPOP_REPLY) &&
		    arp->sip == cfg->gw_ip && mac_eq(arp->sha, cfg->gw_mac))
			return TC_ACT_OK;
		return drop(cfg->slot, DROP_ARP);
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return drop(cfg->slot, DROP_NOT_IPV4);
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return drop(cfg->slot, DROP_MALFORMED);
	if (ip->ihl != 5 || ip->version != 4 || ip->daddr != cfg->sbx_addr)
		return drop(cfg->slot, DROP_MALFORMED);
	if (ip->frag_off & bpf_htons(0x3fff))
		return drop(cfg->slot, DROP_FRAGMENT);
	node = node_cfg();
	if (!node)
		return drop(cfg->slot, DROP_UNCONFIGURED);
	src = ip->saddr;
	dst = ip->daddr;
	proto = ip->protocol;
	rc = l4_ports(skb, proto, 1, &sport, &dport, &tcp_flags);
	if (rc == -1)
		return drop(cfg->slot, DROP_MALFORMED);

	if (src == node->proxy_addr) {
		/* The proxy, and only the proxy, reaches exposed ports. ICMP echo does not
		 * parse as a reply here (rc == -2), so the proxy cannot ping either. */
		struct port_key k = { .policy_id = cfg->policy_id, .port = bpf_ntohs(dport) };
		struct proxy_ct_key ck = {};
		__u64 now;

		if (rc != 0 || proto == IPPROTO_ICMP)
			return drop(cfg->slot, DROP_INGRESS);
		if (!(cfg->flags & CFG_ALL_PORTS) && !bpf_map_lookup_elem(&cvs_ports, &k))
			return drop(cfg->slot, DROP_INGRESS);
		ck.ifindex = ifindex;
		ck.guest_port = dport;
		ck.proxy_port = sport;
		ck.proto = proto;
		now = bpf_ktime_get_ns();
		bpf_map_update_elem(&cvs_proxy_ct, &ck, &now, BPF_ANY);
	} else {
		/* Otherwise only replies to the sandbox's own egress flows, i.e. whatever the
		 * uplink NAT translated back: its state is the conntrack here. */
		struct flow4 f = {
			.src = dst,
			.dst = src,
			.sport = dport,
			.dport = sport,
			.proto = proto,
		};

		if (rc != 0)
			return drop(cfg->slot, DROP_INGRESS);
		if (proto == IPPROTO_ICMP) {
			f.sport = sport;	/* echo identifier */
			f.dport = 0;
		}
		if (!bpf_map_lookup_elem(&cvs_nat_out, &f))
			return drop(cfg->slot, DROP_INGRESS);
	}

	count(cfg->slot, skb->len, 0);
	if (proto == IPPROTO_TCP && (tcp_flags & 0x02))
		clamp_mss(skb, node->mss_max);
	if (rewrite_addr(skb, proto, 0, dst, cfg->guest_ip))
		return drop(cfg->slot, DROP_MALFORMED);
	return TC_ACT_OK;
}

/* Packets leaving the node through an uplink: NAPT for sandbox addresses only. */
SEC("tc")
int cvs_up_out(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct uplink_cfg *up;
	struct node_cfg *node;
	struct nat_out_val *ov, nov = {};
	struct nat_in_key ik = {};
	struct nat_in_val iv = {};
	struct flow4 f = {};
	__u32 ifindex = skb->ifindex, *tap, span, start, i;
	__u8 tcp_flags = 0;
	__be16 nat_port = 0;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return TC_ACT_OK;
	tap = bpf_map_lookup_elem(&cvs_addr, &ip->saddr);
	if (!tap)
		return TC_ACT_OK;	/* not a sandbox: the node's own traffic */
	up = bpf_map_lookup_elem(&cvs_uplink, &ifindex);
	node = node_cfg();
	if (!up || !node || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return TC_ACT_SHOT;	/* a sandbox address must never leave un-NATed */
	f.src = ip->saddr;
	f.dst = ip->daddr;
	f.proto = ip->protocol;
	if (l4_ports(skb, f.proto, 0, &f.sport, &f.dport, &tcp_flags))
		return TC_ACT_SHOT;

	ov = bpf_map_lookup_elem(&cvs_nat_out, &f);
	if (ov && ov->nat_ip == up->nat_ip) {
		/* Existing flow; make sure the reverse entry was not evicted under us. */
		ik.nat_ip = ov->nat_ip;
		ik.remote = f.dst;
		ik.nat_port = ov->nat_port;
		ik.remote_port = f.dport;
		ik.proto = f.proto;
		nat_port = ov->nat_port;
		if (!bpf_map_lookup_elem(&cvs_nat_in, &ik)) {
			iv.orig_src = f.src;
			iv.orig_sport = f.sport;
			if (bpf_map_update_elem(&cvs_nat_in, &ik, &iv, BPF_NOEXIST))
				nat_port = 0;	/* the port went to another flow: pick anew */
		}
	}
	if (!nat_port) {
		span = (__u32)node->nat_port_hi - node->nat_port_lo + 1;
		if (span == 0 || span > 65536)
			return TC_ACT_SHOT;
		start = bpf_get_prandom_u32();
		iv.orig_src = f.src;
		iv.orig_sport = f.sport;
		ik.nat_ip = up->nat_ip;
		ik.remote = f.dst;
		ik.remote_port = f.dport;
		ik.proto = f.proto;
		for (i = 0; i < 32; i++) {
			__u16 p = node->nat_port_lo + (start + i) % span;

			ik.nat_port = bpf_htons(p);
			if (!bpf_map_update_elem(&cvs_nat_in, &ik, &iv, BPF_NOEXIST)) {
				nat_port = ik.nat_port;
				break;
			}
		}
		if (!nat_port) {
			__u32 *t = tap;
			struct sbx_cfg *cfg = bpf_map_lookup_elem(&cvs_cfg, t);

			return cfg ? drop(cfg->slot, DROP_NAT) : TC_ACT_SHOT;
		}
		nov.nat_ip = up->nat_ip;
		nov.nat_port = nat_port;
		bpf_map_update_elem(&cvs_nat_out, &f, &nov, BPF_ANY);
	}

	if (rewrite_addr(skb, f.proto, 1, f.src, up->nat_ip))
		return TC_ACT_SHOT;
	if (rewrite_port(skb, f.proto, 1, f.sport, nat_port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* Packets arriving on an uplink: undo the NAPT of replies; leave everything else alone. */
SEC("tc")
int cvs_up_in(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct uplink_cfg *up;
	struct nat_in_key ik = {};
	struct nat_in_val *iv, v;
	__u32 ifindex = skb->ifindex;
	__be16 sport = 0, dport = 0;
	__u8 tcp_flags = 0;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return TC_ACT_OK;
	up = bpf_map_lookup_elem(&cvs_uplink, &ifindex);
	if (!up || ip->daddr != up->nat_ip)
		return TC_ACT_OK;
	ik.nat_ip = ip->daddr;
	ik.remote = ip->saddr;
	ik.proto = ip->protocol;
	if (l4_ports(skb, ik.proto, 1, &sport, &dport, &tcp_flags))
		return TC_ACT_OK;
	if (ik.proto == IPPROTO_ICMP) {
		ik.nat_port = sport;	/* echo identifier */
		ik.remote_port = 0;
	} else {
		ik.nat_port = dport;
		ik.remote_port = sport;
	}
	iv = bpf_map_lookup_elem(&cvs_nat_in, &ik);
	if (!iv)
		return TC_ACT_OK;
	v = *iv;
	if (rewrite_addr(skb, ik.proto, 0, ik.nat_ip, v.orig_src))
		return TC_ACT_SHOT;
	if (rewrite_port(skb, ik.proto, ik.proto == IPPROTO_ICMP, ik.nat_port, v.orig_sport))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
