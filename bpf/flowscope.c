/* flowscope.c - the flow tracker, compiled at run time by BCC: XDP on ingress, TC on egress.
 *
 * Both entry points (flowscope_xdp, flowscope_tc) call one parse_and_account with the
 * direction; the parser, the keys, the maps and the counters are shared, the key and the
 * counters carry the direction. Every frame is parsed with the cursor helpers of parsing.h
 * (Ethernet, up to two VLAN tags, IPv4 or IPv6 with up to eight extension headers, transport
 * ports) and added to its flow in a per-CPU hash, one map per family. A flow's first packet
 * inserts it and announces it on the ring buffer; when the map is full the packet is counted
 * as CNT_MAP_FULL, added to the flood table by its source prefix and target, and its key is
 * still announced. Announcements have a budget per CPU (EVENT_BUDGET records a second): past
 * it a record is counted (CNT_EVENTS_LIMITED), not written, so a flood of new flows cannot make
 * the ring buffer, or its reader, the bottleneck. Frames that are not
 * IP or whose IP header is unusable only bump a counter. Neither program changes traffic: XDP
 * returns XDP_PASS, TC returns TC_ACT_UNSPEC (no verdict: the next program or the default);
 * built with -DFS_BLOCK (--allow-block) the XDP program drops received packets that match a
 * block rule (struct block_src4 and the rest in flowscope.h), after counting them.
 * Built with -DFS_REPLAY (flowscope replay) it takes each frame's time, original length and
 * interface from the struct replay_meta in front of it; the live build has none of that code.
 * For record and live, owners.c (the socket hooks) is compiled in the same BCC module, after
 * this file: one compile for both (a second BCC compile cost a second more at start).
 */
/* Only uapi headers, and not even <uapi/linux/in.h>: the kernel-internal <linux/ip.h> and
 * friends pull in most of the kernel's headers, and parsing them was most of the seconds BCC
 * takes to compile (bench row compile_flow_program). parsing.h names the protocols itself. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/asm-generic/errno-base.h>
#include "flowscope.h"
#include "parsing.h"

/* Preallocated (0): the maps' memory is taken at load, and an insert in a flood never asks the
 * allocator. flowscope bench builds them with BPF_F_NO_PREALLOC too, to measure the other way. */
#ifndef FLOW_MAP_FLAGS
#define FLOW_MAP_FLAGS 0
#endif
BPF_F_TABLE("percpu_hash", struct flow_key4, struct flow_value, flows4, FLOW_ENTRIES,
            FLOW_MAP_FLAGS);
BPF_F_TABLE("percpu_hash", struct flow_key6, struct flow_value, flows6, FLOW_ENTRIES,
            FLOW_MAP_FLAGS);
BPF_TABLE("percpu_hash", struct flood_key, struct flood_value, floods, FLOOD_ENTRIES);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

BPF_PERCPU_ARRAY(cpu_state, struct cpu_state, 1);

#ifdef FS_BLOCK
BPF_F_TABLE("lpm_trie", struct block_src4, struct block_value, block_src4, BLOCK_ENTRIES,
            BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct block_src6, struct block_value, block_src6, BLOCK_ENTRIES,
            BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct block_target4, struct block_value, block_target4, BLOCK_ENTRIES,
            BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct block_target6, struct block_value, block_target6, BLOCK_ENTRIES,
            BPF_F_NO_PREALLOC);
BPF_ARRAY(block_rules, struct block_rules, 1);
BPF_ARRAY(block_gen, __u32, 1);

static __always_inline int has_bit(const __u64 *bits, __u32 i)
{
    return (bits[(i >> 6) & (BLOCK_BITMAP_WORDS - 1)] >> (i & 63)) & 1;
}

/* Whether a received packet matches a rule (and count it there): its family's source trie,
 * then its target trie, each only while it holds rules and the packet's bit is set. fv is this
 * CPU's value of the packet's flow (0 for a flow's first packet or when it has none): a flow
 * that passed under the current generation of the rules passes again without a search, and
 * one that passes now remembers the generation. The generation is read before the rules, and
 * user space writes it after them (kernel/block.py), so a flow never remembers a passing
 * verdict under a generation whose rules it was not checked against. */
static __always_inline int blocked(__u8 family, const void *saddr, __u8 proto, __u16 dport,
                                   struct flow_value *fv)
{
    __u32 zero = 0;
    __u32 *g = block_gen.lookup(&zero);
    if (!g)
        return 0;
    __u32 gen = *(volatile __u32 *)g;
    if (fv && fv->block_gen == gen)
        return 0;
    struct block_rules *n = block_rules.lookup(&zero);
    if (!n)
        return 0;
    struct block_value *v = 0;
    const __u8 *a = saddr;
    __u32 port = bpf_ntohs(dport);
    if (family == FS_AF_INET) {
        if (n->src4 && has_bit(n->src4_bits, (__u32)a[0] << 8 | a[1])) {
            struct block_src4 k = { .prefixlen = 32 };
            __builtin_memcpy(k.saddr, saddr, 4);
            v = block_src4.lookup(&k);
        }
        if (!v && n->target4 && has_bit(n->target_bits, port)) {
            struct block_target4 k = { .prefixlen = BLOCK_TARGET_BITS + 32, .proto = proto };
            __builtin_memcpy(k.dport, &dport, 2);
            __builtin_memcpy(k.saddr, saddr, 4);
            v = block_target4.lookup(&k);
        }
    } else {
        if (n->src6 && has_bit(n->src6_bits, (__u32)a[2] << 8 | a[3])) {
            struct block_src6 k = { .prefixlen = 128 };
            __builtin_memcpy(k.saddr, saddr, 16);
            v = block_src6.lookup(&k);
        }
        if (!v && n->target6 && has_bit(n->target_bits, port)) {
            struct block_target6 k = { .prefixlen = BLOCK_TARGET_BITS + 128, .proto = proto };
            __builtin_memcpy(k.dport, &dport, 2);
            __builtin_memcpy(k.saddr, saddr, 16);
            v = block_target6.lookup(&k);
        }
    }
    if (!v) {
        if (fv)
            fv->block_gen = gen;
        return 0;
    }
    __sync_fetch_and_add(&v->matched, 1);
    return 1;
}
#endif

/* What the parsers learn about one packet besides its key. */
struct packet_info {
    __u64 bytes;
    __u32 segs;         /* packets this is: 1, or a GSO packet's segments on egress */
    __u64 ip_bytes;
    __u8 tcp_flags;
#ifdef FS_REPLAY
    __u64 time;         /* the capture's timestamp (struct replay_meta) */
#endif
#ifdef FS_OWNERS
    void *ctx;          /* egress: the skb, whose socket owns a flow sent from this host */
#endif
};

#ifdef FS_OWNERS
/* owners.c (joined after this file): announce the socket that sent a new flow */
static __always_inline void owners_flow_sent(void *ctx, struct flow_event *ev);
#endif

/* The direction is a constant in each entry point, so after inlining the counter's address
 * is too: per-direction counters cost the XDP hot path nothing. */
static __always_inline void count(struct cpu_state *st, __u8 dir, __u32 idx)
{
    st->counters[dir][idx] += 1;
}

/* Per-packet counters count a GSO packet (egress) as its segments, as they leave the wire. */
static __always_inline void count_pkt(struct cpu_state *st, __u8 dir, __u32 idx, struct packet_info *pi)
{
    st->counters[dir][idx] += pi->segs;
}

/* The time of a packet, CLOCK_MONOTONIC ns. bpf_ktime_get_ns() costs as much as the rest of
 * the hot path together (measured: about 30 ns of 85), while bpf_jiffies64() is inlined by the
 * verifier. So each CPU keeps the ktime of the last jiffy it saw and calls the clock again only
 * when the jiffy changes: times are exact to one tick (4 ms at HZ=250). FS_PRECISE_CLOCK asks
 * for the clock on every packet instead. */
static __always_inline __u64 now_ns(struct cpu_state *st, struct packet_info *pi)
{
#if defined(FS_REPLAY)
    return pi->time;
#elif defined(FS_PRECISE_CLOCK)
    return bpf_ktime_get_ns();
#else
    __u64 j = bpf_jiffies64();
    if (st->clock_jiffies != j) {
        st->clock_jiffies = j;
        st->clock_ns = bpf_ktime_get_ns();
    }
    return st->clock_ns;
#endif
}

static __always_inline void add_packet(struct flow_value *v, struct packet_info *pi, __u64 now)
{
    /* A flow is inserted with a value on the inserting CPU only; the slot of every other CPU
     * starts at zero, so its first packet there sets its first_seen. */
#ifdef FS_REPLAY
    /* A capture is not always in time order (pcapng files merge interfaces, and capture
     * clocks step): keep the earliest and the latest time, whatever the order. */
    if (v->packets == 0 || now < v->first_seen)
        v->first_seen = now;
    if (now > v->last_seen)
        v->last_seen = now;
#else
    if (v->packets == 0)
        v->first_seen = now;
    v->last_seen = now;
#endif
    v->packets += pi->segs;
    v->bytes += pi->bytes;
    v->ip_bytes += pi->ip_bytes;
    v->tcp_flags |= pi->tcp_flags;
}

/* Whether a map (FULL_*) was found full in this jiffy: an insert into a full hash takes a
 * bucket lock and fails, and in a flood of new flows that would be every packet. Live only:
 * a replay's clock is the capture's, and it tries every insert. */
#define FULL_FLOWS4 0
#define FULL_FLOWS6 1
#define FULL_FLOODS 2
static __always_inline int known_full(struct cpu_state *st, int which)
{
#ifdef FS_REPLAY
    return 0;
#else
    return st->full_jiffies[which] == st->clock_jiffies + 1;
#endif
}

static __always_inline void mark_full(struct cpu_state *st, int which)
{
    st->full_jiffies[which] = st->clock_jiffies + 1;
}

/* The announcement budget: at most EVENT_BUDGET records per CPU in each one-second window (a
 * fixed window: a token bucket refilled at once every window). A replay, or EVENT_BUDGET 0 (the
 * benchmarks of the ring buffer's reader), announces everything. */
static __always_inline int may_announce(struct cpu_state *st, __u64 now)
{
#if !defined(FS_REPLAY) && EVENT_BUDGET > 0
    if (now - st->event_window >= EVENT_WINDOW_NS) {
        st->event_window = now;
        st->event_count = 0;
    }
    if (st->event_count >= EVENT_BUDGET)
        return 0;
    st->event_count += 1;
#endif
    return 1;
}

/* Add a packet to this CPU's slot of a flood table entry; 0 when there is none. */
static __always_inline int add_flood(struct flood_value *fv, struct packet_info *pi)
{
    if (!fv)
        return 0;
    fv->packets += pi->segs;
    fv->bytes += pi->bytes;
    return 1;
}

/* A packet no flow map could take, counted by its source prefix (the first bytes of saddr: 3
 * for an IPv4 /24, 8 for an IPv6 /64) and target. */
static __always_inline void count_flood(struct cpu_state *st, __u8 dir, __u8 family,
                                        const void *saddr, __u32 ifindex, __u16 dport,
                                        __u8 proto, struct packet_info *pi)
{
    struct flood_key fk = {};
    if (family == FS_AF_INET)
        __builtin_memcpy(fk.prefix, saddr, 3);
    else
        __builtin_memcpy(fk.prefix, saddr, 8);
    fk.ifindex = ifindex;
    fk.dport = dport;
    fk.proto = proto;
    fk.tcp_flags = pi->tcp_flags;
    fk.family = family;
    fk.direction = dir;
    if (add_flood(floods.lookup(&fk), pi))
        return;
    if (!known_full(st, FULL_FLOODS)) {
        struct flood_value nv = { .packets = pi->segs, .bytes = pi->bytes };
        int err = floods.insert(&fk, &nv);
        if (err == 0)
            return;
        /* another CPU inserted it: this CPU's slot starts at zero */
        if (err == -EEXIST && add_flood(floods.lookup(&fk), pi))
            return;
        mark_full(st, FULL_FLOODS);
    }
    count_pkt(st, dir, CNT_FLOOD_OTHER, pi);
}

/* The first packet of a flow that found no slot in its map: count it (created when the insert
 * worked, err 0; else map full, and in the flood table) and say whether to build its record:
 * when the budget allows, and always for an egress flow created with FS_OWNERS (the socket
 * hooks name its process from it, whatever the budget). The record is built only then, so a
 * flood past the budget costs no 64-byte record per packet. */
static __always_inline int first_packet(struct cpu_state *st, __u8 dir, __u8 family,
                                        const void *saddr, __u32 ifindex, __u16 dport,
                                        __u8 proto, struct packet_info *pi, __u64 now, int err)
{
    if (err == 0) {
        count(st, dir, CNT_FLOWS_CREATED);
#ifdef FS_OWNERS
        if (dir == FS_DIR_EGRESS)   /* a constant: the XDP program has no such branch */
            return 1;
#endif
    } else {
        count_pkt(st, dir, CNT_MAP_FULL, pi);
        count_flood(st, dir, family, saddr, ifindex, dport, proto, pi);
    }
    if (may_announce(st, now))
        return 1;
    count(st, dir, CNT_EVENTS_LIMITED);
    return 0;
}

/* Write the record of a first packet first_packet let through on the ring buffer (an egress
 * flow created with FS_OWNERS asks the budget here), then tell the socket hooks of an egress
 * flow created. */
static __always_inline void announce_new(struct cpu_state *st, __u8 dir, struct flow_event *ev,
                                         struct packet_info *pi, __u64 now, int err)
{
    ev->timestamp = now;
    ev->length = pi->bytes;
    ev->flags = err == 0 ? 0 : FS_EVENT_MAP_FULL;
#ifdef FS_OWNERS
    if (dir == FS_DIR_EGRESS && err == 0) {
        if (!may_announce(st, now))
            count(st, dir, CNT_EVENTS_LIMITED);
        else if (events.ringbuf_output(ev, sizeof(*ev), 0) != 0)
            count(st, dir, CNT_RINGBUF_FULL);
        owners_flow_sent(pi->ctx, ev);
        return;
    }
#endif
    if (events.ringbuf_output(ev, sizeof(*ev), 0) != 0)
        count(st, dir, CNT_RINGBUF_FULL);
}

static __always_inline void new_value(struct flow_value *v, struct packet_info *pi, __u64 now)
{
    v->packets = pi->segs;
    v->bytes = pi->bytes;
    v->ip_bytes = pi->ip_bytes;
    v->first_seen = now;
    v->last_seen = now;
    v->tcp_flags = pi->tcp_flags;
}

static __always_inline struct flow_value *account4(struct cpu_state *st, __u8 dir,
                                                    struct flow_key4 *key,
                                                    struct packet_info *pi)
{
    __u64 now = now_ns(st, pi);
    struct flow_value *v = flows4.lookup(key);
    if (v) {
        add_packet(v, pi, now);
        return v;
    }
    int err = -E2BIG;
    if (!known_full(st, FULL_FLOWS4)) {
        struct flow_value nv = {};
        new_value(&nv, pi, now);
        err = flows4.insert(key, &nv);
        if (err != 0 && err != -EEXIST)
            mark_full(st, FULL_FLOWS4);
    }
    if (err == -EEXIST) {
        /* another CPU inserted it first and announced it; this CPU's slot starts at zero */
        v = flows4.lookup(key);
        if (v) {
            add_packet(v, pi, now);
            return v;
        }
    }
    if (!first_packet(st, dir, FS_AF_INET, &key->saddr, key->ifindex, key->dport, key->proto,
                      pi, now, err))
        return 0;
    struct flow_event ev = {};
    ev.ifindex = key->ifindex;
    __builtin_memcpy(ev.saddr, &key->saddr, 4);
    __builtin_memcpy(ev.daddr, &key->daddr, 4);
    ev.sport = key->sport;
    ev.dport = key->dport;
    ev.vlan = key->vlan;
    ev.proto = key->proto;
    ev.family = FS_AF_INET;
    ev.direction = dir;
    announce_new(st, dir, &ev, pi, now, err);
    return 0;
}

static __always_inline struct flow_value *account6(struct cpu_state *st, __u8 dir,
                                                    struct flow_key6 *key,
                                                    struct packet_info *pi)
{
    __u64 now = now_ns(st, pi);
    struct flow_value *v = flows6.lookup(key);
    if (v) {
        add_packet(v, pi, now);
        return v;
    }
    int err = -E2BIG;
    if (!known_full(st, FULL_FLOWS6)) {
        struct flow_value nv = {};
        new_value(&nv, pi, now);
        err = flows6.insert(key, &nv);
        if (err != 0 && err != -EEXIST)
            mark_full(st, FULL_FLOWS6);
    }
    if (err == -EEXIST) {
        v = flows6.lookup(key);
        if (v) {
            add_packet(v, pi, now);
            return v;
        }
    }
    if (!first_packet(st, dir, FS_AF_INET6, key->saddr, key->ifindex, key->dport, key->proto,
                      pi, now, err))
        return 0;
    struct flow_event ev = {};
    ev.ifindex = key->ifindex;
    __builtin_memcpy(ev.saddr, key->saddr, 16);
    __builtin_memcpy(ev.daddr, key->daddr, 16);
    ev.sport = key->sport;
    ev.dport = key->dport;
    ev.vlan = key->vlan;
    ev.proto = key->proto;
    ev.family = FS_AF_INET6;
    ev.direction = dir;
    announce_new(st, dir, &ev, pi, now, err);
    return 0;
}

/* handle_ipv4 and handle_ipv6 return 1 when the packet is to be dropped (a block rule matched:
 * FS_BLOCK, received packets only), else 0. */
static __always_inline int handle_ipv4(struct cpu_state *st, __u8 dir, struct hdr_cursor *nh,
                                       void *end, __u32 ifindex, __u16 vlan,
                                       struct packet_info *pi)
{
    struct iphdr *iph = parse_iphdr(nh, end);
    if (!iph) {
        count_pkt(st, dir, CNT_MALFORMED, pi);
        return 0;
    }
    struct flow_key4 key = {};
    key.ifindex = ifindex;
    key.direction = dir;
    key.saddr = iph->saddr;
    key.daddr = iph->daddr;
    key.vlan = vlan;
    key.proto = iph->protocol;
    pi->ip_bytes = bpf_ntohs(iph->tot_len);
    /* a later fragment (offset != 0) has no transport header: ports stay 0 */
    if ((iph->frag_off & bpf_htons(0x1fff)) == 0) {
        if (parse_ports(nh, end, key.proto, &key.sport, &key.dport, &pi->tcp_flags) < 0)
            count_pkt(st, dir, CNT_TRUNCATED, pi);
    }
    struct flow_value *v = account4(st, dir, &key, pi);
#ifdef FS_BLOCK
    if (dir == FS_DIR_INGRESS)  /* a constant: the TC program has no such branch */
        return blocked(FS_AF_INET, &key.saddr, key.proto, key.dport, v);
#endif
    (void)v;
    return 0;
}

static __always_inline int handle_ipv6(struct cpu_state *st, __u8 dir, struct hdr_cursor *nh,
                                       void *end, __u32 ifindex, __u16 vlan,
                                       struct packet_info *pi)
{
    struct ipv6hdr *ip6h = parse_ip6hdr(nh, end);
    if (!ip6h) {
        count_pkt(st, dir, CNT_MALFORMED, pi);
        return 0;
    }
    struct flow_key6 key = {};
    key.ifindex = ifindex;
    key.direction = dir;
    __builtin_memcpy(key.saddr, &ip6h->saddr, 16);
    __builtin_memcpy(key.daddr, &ip6h->daddr, 16);
    key.vlan = vlan;
    pi->ip_bytes = 40 + bpf_ntohs(ip6h->payload_len);
    /* The protocol is the first next-header that is not an extension header. A chain cut
     * short, or longer than MAX_EXT_HEADERS, stops the walk: the protocol is then the header
     * where it stopped, with ports 0. */
    int ports;
    if (skip_ip6hdrext(nh, end, ip6h->nexthdr, &key.proto, &ports) < 0) {
        count_pkt(st, dir, CNT_TRUNCATED, pi);
    } else if (ports) {
        if (parse_ports(nh, end, key.proto, &key.sport, &key.dport, &pi->tcp_flags) < 0)
            count_pkt(st, dir, CNT_TRUNCATED, pi);
    }
    struct flow_value *v = account6(st, dir, &key, pi);
#ifdef FS_BLOCK
    if (dir == FS_DIR_INGRESS)
        return blocked(FS_AF_INET6, key.saddr, key.proto, key.dport, v);
#endif
    (void)v;
    return 0;
}

/* The one parser and accountant of both entry points: data..end is the frame from its Ethernet
 * header, hw_vlan a VLAN tag the device keeps beside the frame (TC egress with VLAN offload;
 * 0 if none): it is then the outermost tag. pi->bytes and pi->segs are set by the caller.
 * Returns 1 when a block rule says to drop the packet (FS_BLOCK), else 0. */
static __always_inline int parse_and_account(struct cpu_state *st, void *data, void *end,
                                              __u32 ifindex, __u8 dir, __u16 hw_vlan,
                                              struct packet_info *pi)
{
    count_pkt(st, dir, CNT_PACKETS, pi);
    st->counters[dir][CNT_BYTES] += pi->bytes;
    struct hdr_cursor nh = { .pos = data };
    __u16 vlan;
    int proto = parse_ethhdr(&nh, end, hw_vlan, &vlan);
    if (proto < 0)
        count_pkt(st, dir, CNT_MALFORMED, pi);
    else if (proto == bpf_htons(ETH_P_IP))
        return handle_ipv4(st, dir, &nh, end, ifindex, vlan, pi);
    else if (proto == bpf_htons(ETH_P_IPV6))
        return handle_ipv6(st, dir, &nh, end, ifindex, vlan, pi);
    else
        count_pkt(st, dir, CNT_NON_IP, pi);
    return 0;
}

int flowscope_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct packet_info pi = {};
    __u32 zero = 0;
    struct cpu_state *st = cpu_state.lookup(&zero);

    if (!st)
        return XDP_PASS; /* cannot happen: a one-entry array always has entry 0 */
    pi.bytes = end - data;
    pi.segs = 1;
    __u32 ifindex = ctx->ingress_ifindex;
#ifdef FS_REPLAY
    /* A frame without metadata (not from flowscope replay) keeps the live meaning, with the
     * time of the clock. */
    struct replay_meta *meta = (void *)(long)ctx->data_meta;
    if ((void *)(meta + 1) <= data) {
        pi.time = meta->timestamp;
        pi.bytes = meta->wire_len;
        ifindex = meta->ifindex;
    } else {
        pi.time = bpf_ktime_get_ns();
    }
#endif
    if (parse_and_account(st, data, end, ifindex, FS_DIR_INGRESS, 0, &pi))
        return XDP_DROP;    /* a block rule (FS_BLOCK only: else never) */
    return XDP_PASS;
}

/* Egress, attached through tcx (or a clsact qdisc on kernels before 6.6). The skb may hold the
 * frame in pages beyond its linear part: the headers flowscope reads are in the linear part for
 * locally built packets, and what is not is counted like a frame cut short. A GSO packet (TSO)
 * counts as its segments, with its whole length. The verdict is always TC_ACT_UNSPEC. */
int flowscope_tc(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct packet_info pi = {};
    __u32 zero = 0;
    struct cpu_state *st = cpu_state.lookup(&zero);

    if (!st)
        return TC_ACT_UNSPEC;
    pi.bytes = skb->len;
    __u32 segs = skb->gso_segs;
    pi.segs = segs > 1 ? segs : 1;
#ifdef FS_REPLAY
    pi.time = bpf_ktime_get_ns();
#endif
#ifdef FS_OWNERS
    pi.ctx = skb;
#endif
    __u16 hw_vlan = skb->vlan_present ? (skb->vlan_tci & 0x0fff) : 0;
    parse_and_account(st, data, end, skb->ifindex, FS_DIR_EGRESS, hw_vlan, &pi);
    return TC_ACT_UNSPEC;
}
