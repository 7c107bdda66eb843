/* parsing.h - packet parsing over a header cursor, in the style of xdp-tools' parsing_helpers.h.
 *
 * Each helper reads one header at the cursor: it checks the bounds before every read, moves
 * the cursor past what it parsed, and returns -1 (or NULL) when the packet is too short or the
 * header unusable. Nothing here counts or stores: flowscope.c decides what a failure means.
 */
#ifndef FLOWSCOPE_PARSING_H
#define FLOWSCOPE_PARSING_H

/* IPPROTO_* as <uapi/linux/in.h> has them, without its second of compile time */
#define IPPROTO_ICMP_     1
#define IPPROTO_TCP_      6
#define IPPROTO_UDP_      17
#define IPPROTO_HOPOPTS_  0
#define IPPROTO_ROUTING_  43
#define IPPROTO_FRAGMENT_ 44
#define IPPROTO_DSTOPTS_  60
#define IPPROTO_ICMPV6_   58
#define IPPROTO_UDPLITE_  136
#define IPPROTO_SCTP_     132
#define IPPROTO_DCCP_     33
#define MAX_VLAN_TAGS     2
#define MAX_EXT_HEADERS   8

struct hdr_cursor {
    void *pos;
};

struct vlan_tag {
    __be16 tci;
    __be16 proto;
};

struct ext_header {
    __u8 nexthdr;
    __u8 len;           /* in 8-byte units, not counting the first 8 bytes */
    __be16 frag_off;    /* fragment header only: offset << 3 | flags */
    __u32 rest;
};

/* Ethernet and up to MAX_VLAN_TAGS 802.1Q/802.1ad tags. Returns the ethertype after them
 * (network order), -1 when the frame ends inside them. *vlan is the outermost tag's id, or
 * hw_vlan when the device keeps the tag beside the frame (TC egress with VLAN offload). */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *end, __u16 hw_vlan,
                                        __u16 *vlan)
{
    struct ethhdr *eth = nh->pos;
    if ((void *)(eth + 1) > end)
        return -1;
    nh->pos = eth + 1;
    __be16 proto = eth->h_proto;
    *vlan = hw_vlan;
#pragma unroll
    for (int i = 0; i < MAX_VLAN_TAGS; i++) {
        if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
            break;
        struct vlan_tag *tag = nh->pos;
        if ((void *)(tag + 1) > end)
            return -1;
        if (i == 0 && !hw_vlan)
            *vlan = bpf_ntohs(tag->tci) & 0x0fff;
        proto = tag->proto;
        nh->pos = tag + 1;
    }
    return proto;
}

/* An IPv4 header with its options; NULL when it is cut short or not a usable IPv4 header. */
static __always_inline struct iphdr *parse_iphdr(struct hdr_cursor *nh, void *end)
{
    struct iphdr *iph = nh->pos;
    if ((void *)(iph + 1) > end || iph->version != 4 || iph->ihl < 5)
        return NULL;
    __u32 hlen = iph->ihl * 4;
    if (nh->pos + hlen > end)
        return NULL;
    nh->pos += hlen;
    return iph;
}

/* The fixed IPv6 header; NULL when it is cut short or not IPv6. */
static __always_inline struct ipv6hdr *parse_ip6hdr(struct hdr_cursor *nh, void *end)
{
    struct ipv6hdr *ip6h = nh->pos;
    if ((void *)(ip6h + 1) > end || ip6h->version != 6)
        return NULL;
    nh->pos = ip6h + 1;
    return ip6h;
}

static __always_inline int is_ext_header(__u8 nh)
{
    return nh == IPPROTO_HOPOPTS_ || nh == IPPROTO_ROUTING_ || nh == IPPROTO_FRAGMENT_ ||
           nh == IPPROTO_DSTOPTS_;
}

/* Walks up to MAX_EXT_HEADERS IPv6 extension headers from next-header nexthdr. *proto is the
 * first next-header that is not one of them (or the one where the walk stopped); *ports is 0
 * when the transport header is not there to read (a later fragment, a chain longer than the
 * walk). Returns -1 when the chain is cut short by the end of the packet. */
static __always_inline int skip_ip6hdrext(struct hdr_cursor *nh, void *end, __u8 nexthdr,
                                          __u8 *proto, int *ports)
{
    *ports = 1;
#pragma unroll
    for (int i = 0; i < MAX_EXT_HEADERS; i++) {
        if (!is_ext_header(nexthdr))
            break;
        struct ext_header *eh = nh->pos;
        if ((void *)(eh + 1) > end) {
            *proto = nexthdr;
            *ports = 0;
            return -1;
        }
        if (nexthdr == IPPROTO_FRAGMENT_) {
            nexthdr = eh->nexthdr;
            nh->pos += 8;
            if (eh->frag_off & bpf_htons(0xfff8)) {
                *proto = nexthdr;
                *ports = 0; /* a later fragment */
                return 0;
            }
        } else {
            nexthdr = eh->nexthdr;
            nh->pos += (eh->len + 1) * 8;
        }
    }
    if (is_ext_header(nexthdr))
        *ports = 0;
    *proto = nexthdr;
    return 0;
}

/* The ports (or ICMP type and code) of the transport header at the cursor. Returns 0 when they
 * were read or the protocol has none, -1 when the fixed part of the header is cut short (the
 * ports then stay 0). Each branch checks its own constant length: the verifier needs to see it. */
static __always_inline int parse_ports(struct hdr_cursor *nh, void *end, __u8 proto,
                                       __u16 *sport, __u16 *dport, __u8 *tcp_flags)
{
    void *pos = nh->pos;
    if (proto == IPPROTO_TCP_) {
        if (pos + 20 > end)
            return -1;
        *tcp_flags = *(__u8 *)(pos + 13);
    } else if (proto == IPPROTO_UDP_ || proto == IPPROTO_UDPLITE_) {
        if (pos + 8 > end)
            return -1;
    } else if (proto == IPPROTO_SCTP_ || proto == IPPROTO_DCCP_) {
        if (pos + 12 > end)
            return -1;
    } else if (proto == IPPROTO_ICMP_ || proto == IPPROTO_ICMPV6_) {
        if (pos + 4 > end)
            return -1;
        /* type and code, read as one big-endian u16: type * 256 + code */
        *dport = *(__u16 *)pos;
        return 0;
    } else {
        return 0;
    }
    *sport = *(__u16 *)pos;
    *dport = *(__u16 *)(pos + 2);
    return 0;
}

#endif
