// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// hybridway's XDP steering program. Attached to the uplink (and to pod veths), it
// redirects only hybridway's traffic to the AF_XDP socket bound to the receiving
// queue and passes everything else to the kernel, so the node's own traffic (SSH,
// kubelet, BGP) never notices the dataplane:
//
//   * STEER_ALL != 0 (pod veths): every frame goes to the socket.
//   * IPv4 UDP to NODE_ADDR:VXLAN_PORT (overlay): to the socket.
//   * IPv4 TCP/UDP to NODE_ADDR with a destination port in
//     NODE_PORT_MIN..=NODE_PORT_MAX (NodePorts), when NODE_PORT_MAX != 0: to the socket.
//   * IPv4 to POD_NET/POD_MASK, when POD_MASK != 0 (underlay): to the socket.
//   * anything else, or no socket on this queue: XDP_PASS.
//
// Self-contained on purpose (no kernel or libbpf headers) so that only clang is
// needed to build it. The loader (port/xdp/program.rs) sets the constants below
// before loading; addresses and ports are in network byte order.

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#define BPF_MAP_TYPE_XSKMAP 17
#define XDP_PASS 2

struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)51;

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

volatile const __u32 STEER_ALL = 0;
volatile const __u32 NODE_ADDR = 0;
volatile const __u16 VXLAN_PORT = 0;
volatile const __u32 POD_NET = 0;
volatile const __u32 POD_MASK = 0;
/* SNAT replies: TCP/UDP to NAT_ADDR with a destination port, or ICMP echo replies
 * with an identifier, in NAT_PORT_MIN..=NAT_PORT_MAX (host byte order). The agent
 * keeps this range outside the kernel's ip_local_port_range, so the node's own
 * connections stay with the kernel. NAT_ADDR 0 turns the rule off. */
volatile const __u32 NAT_ADDR = 0;
volatile const __u16 NAT_PORT_MIN = 0;
volatile const __u16 NAT_PORT_MAX = 0;
/* NodePorts: TCP/UDP to NODE_ADDR with a destination port in this range (host byte
 * order); NODE_PORT_MAX 0 turns the rule off. */
volatile const __u16 NODE_PORT_MIN = 0;
volatile const __u16 NODE_PORT_MAX = 0;

#define ETH_P_IP_BE 0x0008     /* htons(0x0800) */
#define ETH_P_8021Q_BE 0x0081  /* htons(0x8100) */
#define ETH_P_8021AD_BE 0xa888 /* htons(0x88a8) */
#define IPPROTO_UDP 17
#define IPPROTO_TCP 6
#define IPPROTO_ICMP 1
#define ICMP_ECHOREPLY 0
#define IP_OFFSET_MASK_BE 0xff1f /* htons(0x1fff) */

struct ethhdr {
	__u8 dst[6];
	__u8 src[6];
	__u16 proto;
};

struct vlanhdr {
	__u16 tci;
	__u16 proto;
};

struct iphdr {
	__u8 ver_ihl;
	__u8 tos;
	__u16 tot_len;
	__u16 id;
	__u16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__u32 saddr;
	__u32 daddr;
};

struct udphdr {
	__u16 source;
	__u16 dest;
	__u16 len;
	__u16 check;
};

static __attribute__((always_inline)) int to_socket(struct xdp_md *ctx)
{
	// With no socket on this queue the lower bits of flags are the action taken.
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

SEC("xdp")
int hybridway_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (STEER_ALL)
		return to_socket(ctx);

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	__u16 proto = eth->proto;
	void *l3 = eth + 1;
	if (proto == ETH_P_8021Q_BE || proto == ETH_P_8021AD_BE) {
		struct vlanhdr *vlan = l3;
		if ((void *)(vlan + 1) > data_end)
			return XDP_PASS;
		proto = vlan->proto;
		l3 = vlan + 1;
	}
	if (proto != ETH_P_IP_BE)
		return XDP_PASS;

	struct iphdr *ip = l3;
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	if (POD_MASK != 0 && (ip->daddr & POD_MASK) == POD_NET)
		return to_socket(ctx);
	if (NAT_ADDR != 0 && ip->daddr == NAT_ADDR && !(ip->frag_off & IP_OFFSET_MASK_BE)) {
		__u32 nat_ihl = (ip->ver_ihl & 0x0f) * 4;
		if (nat_ihl < sizeof(*ip))
			return XDP_PASS;
		void *l4 = (void *)ip + nat_ihl;
		__u16 key = 0;
		int have_key = 0;
		if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
			__u16 *ports = l4; /* source, destination */
			if ((void *)(ports + 2) > data_end)
				return XDP_PASS;
			key = __builtin_bswap16(ports[1]);
			have_key = 1;
		} else if (ip->protocol == IPPROTO_ICMP) {
			__u8 *icmp = l4; /* type, code, checksum, identifier */
			if ((void *)(icmp + 6) > data_end)
				return XDP_PASS;
			if (icmp[0] == ICMP_ECHOREPLY) {
				key = (__u16)(icmp[4] << 8 | icmp[5]);
				have_key = 1;
			}
		}
		if (have_key && key >= NAT_PORT_MIN && key <= NAT_PORT_MAX)
			return to_socket(ctx);
	}
	if (NODE_ADDR == 0 || ip->daddr != NODE_ADDR)
		return XDP_PASS;
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP)
		return XDP_PASS;
	// Non-first fragments carry no transport header: leave reassembly to the kernel.
	if (ip->frag_off & IP_OFFSET_MASK_BE)
		return XDP_PASS;
	__u32 ihl = (ip->ver_ihl & 0x0f) * 4;
	if (ihl < sizeof(*ip))
		return XDP_PASS;
	__u16 *ports = (void *)ip + ihl; /* source, destination: TCP and UDP alike */
	if ((void *)(ports + 2) > data_end)
		return XDP_PASS;
	__u16 dport = __builtin_bswap16(ports[1]);
	if (NODE_PORT_MAX != 0 && dport >= NODE_PORT_MIN && dport <= NODE_PORT_MAX)
		return to_socket(ctx);
	if (ip->protocol == IPPROTO_UDP && ports[1] == VXLAN_PORT)
		return to_socket(ctx);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
