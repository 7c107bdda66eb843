/* resets.c - TCP resets per flow: raw tracepoints on tcp:tcp_send_reset and
 * tcp:tcp_receive_reset, compiled after drops.c (whose READ, drop_netns and drop_parse_skb
 * it uses, and whose BTF offsets: flowscope/kernel/btf.py) in the one BCC module of record
 * and live.
 *
 * Both run once per reset, never per packet. A reset the kernel sends answers a packet (a SYN
 * to a closed port, a segment for a connection it does not know: the tracepoint's skb, whose
 * addresses the reset reverses) or aborts a connection of its own (no skb: the socket's
 * addresses); a reset it receives and acts on ends one of its sockets. Each counts in the flow
 * the reset travelled in, keyed as the flow programs key it (struct reset_key), and only in
 * flowscope's own network namespace.
 */
#ifndef SK_FAMILY
#error "resets.c needs the sock offsets from flowscope/kernel/btf.py"
#endif

BPF_TABLE("lru_percpu_hash", struct reset_key, __u64, tcp_resets, RESET_ENTRIES);

static __always_inline void reset_count(struct reset_key *k)
{
    __u64 one = 1;
    __u64 *v = tcp_resets.lookup(k);
    if (v)
        *v += 1;
    else
        tcp_resets.update(k, &one);
}

/* The socket's local (l) and remote (r) addresses and ports (network order) into k as the
 * flow that leaves it (egress) or reaches it (ingress); an IPv6 socket's IPv4-mapped
 * addresses as IPv4. 0: not an IP socket. */
static __always_inline int reset_from_sock(struct reset_key *k, void *sk, __u8 direction)
{
    __u16 family = 0, lport = 0, rport = 0;
    __u8 l[16] = {}, r[16] = {};
    READ(family, sk, SK_FAMILY);
    /* inet_sport, not skc_num: a socket aborted by close() is unhashed (skc_num 0) before
     * its reset goes out, from inet_sport */
    READ(lport, sk, INET_SPORT);        /* network order */
    READ(rport, sk, SK_DPORT);          /* network order */
    if (family == AF_INET_) {
        k->family = FS_AF_INET;
        bpf_probe_read_kernel(l, 4, sk + SK_RCV_SADDR);
        bpf_probe_read_kernel(r, 4, sk + SK_DADDR);
    } else if (family == AF_INET6_) {
        k->family = FS_AF_INET6;
        bpf_probe_read_kernel(l, 16, sk + SK_V6_RCV_SADDR);
        bpf_probe_read_kernel(r, 16, sk + SK_V6_DADDR);
        __u32 *w = (__u32 *)r;
        if (w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xFFFF)) {
            k->family = FS_AF_INET;
            __builtin_memcpy(l, l + 12, 4);
            __builtin_memcpy(r, r + 12, 4);
            __builtin_memset(l + 4, 0, 12);
            __builtin_memset(r + 4, 0, 12);
        }
    } else {
        return 0;
    }
    k->direction = direction;
    if (direction == FS_DIR_EGRESS) {
        __builtin_memcpy(k->saddr, l, 16);
        __builtin_memcpy(k->daddr, r, 16);
        k->sport = lport;
        k->dport = rport;
    } else {
        __builtin_memcpy(k->saddr, r, 16);
        __builtin_memcpy(k->daddr, l, 16);
        k->sport = rport;
        k->dport = lport;
    }
    return 1;
}

/* Attached by flowscope/kernel/resets.py. */
int resets_send(struct bpf_raw_tracepoint_args *ctx)
{
    /* TP_PROTO(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason reason) */
    void *sk = (void *)ctx->args[0];
    void *skb = (void *)ctx->args[1];
    struct reset_key k = {};
    if (skb) {
        /* the packet the reset answers: the reset goes back the way it came */
        void *dev = 0;
        READ(dev, skb, SKB_DEV);
        if (drop_netns(dev, sk) != FS_NETNS_INUM)
            return 0;
        struct drop_key d = {};
        drop_parse_skb(&d, skb);
        if (!d.family || d.proto != 6)
            return 0;
        k.family = d.family;
        k.direction = FS_DIR_EGRESS;
        __builtin_memcpy(k.saddr, d.daddr, 16);
        __builtin_memcpy(k.daddr, d.saddr, 16);
        k.sport = d.dport;
        k.dport = d.sport;
    } else if (sk) {
        /* a connection this host aborts (tcp_send_active_reset) */
        if (drop_netns(0, sk) != FS_NETNS_INUM || !reset_from_sock(&k, sk, FS_DIR_EGRESS))
            return 0;
    } else {
        return 0;
    }
    reset_count(&k);
    return 0;
}

int resets_receive(struct bpf_raw_tracepoint_args *ctx)
{
    /* TP_PROTO(struct sock *sk) */
    void *sk = (void *)ctx->args[0];
    struct reset_key k = {};
    if (!sk || drop_netns(0, sk) != FS_NETNS_INUM || !reset_from_sock(&k, sk, FS_DIR_INGRESS))
        return 0;
    reset_count(&k);
    return 0;
}
