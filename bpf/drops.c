/* drops.c - packets the kernel dropped, per flow and drop reason: a raw tracepoint on
 * skb:kfree_skb, compiled after flowscope.c and owners.c in the one BCC module of record and
 * live (FlowProgram(owners=True)).
 *
 * kfree_skb fires once per packet the kernel frees as dropped (a packet consumed normally
 * takes consume_skb instead), with the reason as the kernel's enum skb_drop_reason: this runs
 * per drop, never per packet received. A raw tracepoint needs no tracefs, and reads the packet
 * with bpf_probe_read_kernel.
 *
 * The struct offsets it reads (SKB_*, DEV_*, NET_INUM, SK_NET) are not taken from the kernel
 * headers BCC compiles with, which may be another version's: flowscope/kernel/btf.py reads
 * them from the running kernel's BTF and passes them with -D (flowscope/kernel/drops.py).
 * Only drops in flowscope's own network namespace (FS_NETNS_INUM) count. Each is counted by
 * reason; at most DROP_BUDGET per CPU and jiffy are also attributed to their flow (struct
 * drop_budget in flowscope.h), the rest are counted as unattributed.
 */
#ifndef SKB_HEAD
#error "drops.c needs the sk_buff offsets from flowscope/kernel/drops.py"
#endif

BPF_TABLE("lru_percpu_hash", struct drop_key, __u64, drops, DROP_ENTRIES);
BPF_PERCPU_ARRAY(drop_totals, __u64, DROP_REASON_SLOTS);
BPF_PERCPU_ARRAY(drop_budget, struct drop_budget, 1);
BPF_ARRAY(drop_xdp_code, struct drop_xdp_code, 1);

#define READ(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(base) + (off))

/* The network namespace inode of the packet's device, else of its socket; 0 when neither. */
static __always_inline __u32 drop_netns(void *dev, void *sk)
{
    void *net = 0;
    __u32 inum = 0;
    if (dev)
        READ(net, dev, DEV_NET);
    else if (sk)
        READ(net, sk, SK_NET);
    if (net)
        READ(inum, net, NET_INUM);
    return inum;
}

/* The packet's addresses, protocol and ports from its network header, as the flow programs
 * key them (ports network order, ICMP type * 256 + code as dport). */
static __always_inline void drop_parse(struct drop_key *k, unsigned char *head, __u16 nh)
{
    __u8 ip[40];
    __u32 thoff;
    if (nh == 0xFFFF || bpf_probe_read_kernel(ip, sizeof(ip), head + nh) != 0)
        return;
    if ((ip[0] >> 4) == 4) {
        k->family = FS_AF_INET;
        k->proto = ip[9];
        __builtin_memcpy(k->saddr, ip + 12, 4);
        __builtin_memcpy(k->daddr, ip + 16, 4);
        thoff = (ip[0] & 0xF) * 4;
        if ((ip[6] & 0x1F) || ip[7])
            return;         /* a later fragment: no transport header, ports stay 0 */
    } else if ((ip[0] >> 4) == 6) {
        k->family = FS_AF_INET6;
        k->proto = ip[6];
        __builtin_memcpy(k->saddr, ip + 8, 16);
        __builtin_memcpy(k->daddr, ip + 24, 16);
        thoff = 40;
    } else {
        return;
    }
    __u16 ports[2] = {};
    if (bpf_probe_read_kernel(ports, sizeof(ports), head + nh + (thoff & 0x3F)) != 0)
        return;
    if (k->proto == 1 || k->proto == 58) {
        k->dport = ports[0];
    } else if (k->proto == 6 || k->proto == 17 || k->proto == 132 || k->proto == 33
               || k->proto == 136) {
        k->sport = ports[0];
        k->dport = ports[1];
    }
}

/* drop_parse on a packet's own network header. */
static __always_inline void drop_parse_skb(struct drop_key *k, void *skb)
{
    unsigned char *head = 0;
    __u16 nh = 0xFFFF;
    READ(head, skb, SKB_HEAD);
    READ(nh, skb, SKB_NETWORK_HEADER);
    if (head)
        drop_parse(k, head, nh);
}

/* Attached by flowscope/kernel/drops.py (not BCC's RAW_TRACEPOINT_PROBE, which attaches at
 * compile time: a kernel that refuses it must still get the flow programs). */
int drops_kfree_skb(struct bpf_raw_tracepoint_args *ctx)
{
    /* TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, ...) */
    void *skb = (void *)ctx->args[0];
    __u32 reason = (__u32)ctx->args[2];
    void *dev = 0, *sk = 0;
    READ(dev, skb, SKB_DEV);
    READ(sk, skb, SKB_SK);
    if (drop_netns(dev, sk) != FS_NETNS_INUM)
        return 0;
    __u32 zero = 0;
#if DROP_REASON_XDP
    if (reason == DROP_REASON_NOT_SPECIFIED) {
        /* what an XDP program dropped in generic mode (struct drop_xdp_code) */
        __u64 at = (__u64)ctx->args[1];
        struct drop_xdp_code *code = drop_xdp_code.lookup(&zero);
        if (code && ((at >= code->start[0] && at < code->end[0])
                     || (at >= code->start[1] && at < code->end[1])))
            reason = DROP_REASON_XDP;
    }
#endif
    __u32 slot = reason < DROP_REASON_SLOTS ? reason : DROP_REASON_SLOTS - 1;
    __u64 *c = drop_totals.lookup(&slot);
    if (c)
        *c += 1;

    struct drop_budget *b = drop_budget.lookup(&zero);
    if (!b)
        return 0;
    __u64 j = bpf_jiffies64();
    if (b->jiffies != j) {
        b->jiffies = j;
        b->count = 0;
    }
    if (b->count >= DROP_BUDGET) {
        b->unattributed += 1;
        return 0;
    }
    b->count += 1;

    struct drop_key k = {};
    k.reason = reason;
    if (dev)
        READ(k.ifindex, dev, DEV_IFINDEX);
    drop_parse_skb(&k, skb);
    if (!k.family)
        return 0;           /* not IP: counted by reason only */
    __u64 one = 1;
    __u64 *v = drops.lookup(&k);
    if (v)
        *v += 1;
    else
        drops.update(&k, &one);
    return 0;
}
