/* owners.c - who owns each local socket: programs for the cgroup v2 root, compiled after
 * flowscope.c in one BCC module for record and live (FlowProgram(owners=True): BCC takes
 * programs only from its main source, so the two files are joined as text), one compile.
 *
 * Attribution has to be taken in the owning process's context when the socket gets its
 * addresses: a connection (and its process) may be gone long before a look at /proc. These
 * programs run once per socket or per connection, never per packet, and the flow programs in
 * flowscope.c do not change:
 *   - owners_create (cgroup/sock_create): every socket a process creates; its cookie is
 *     remembered with the process's pid, uid, command and cgroup in the LRU map `owners`;
 *   - owners_sockops (sock_ops): TCP_CONNECT (the 4-tuple of a connection this host opens,
 *     local port chosen) and TCP_LISTEN (a listening port; the connections it accepts and the
 *     SYNs it answers are its own) are announced with their socket's owner; and each
 *     established connection's health (retransmissions, RTT, as `ss -ti` shows them) is kept
 *     in the map tcp_health, updated by the socket's own RETRANS, RTT and STATE callbacks
 *     (per retransmission or RTT sample, never per packet received);
 *   - owners_post_bind4/6 (cgroup/post_bind): a port bound with bind();
 *   - owners_sendmsg4/6 (cgroup/sendmsg, unconnected UDP): the port an unbound socket got on
 *     its first sendto(), announced once per socket (the `announced` map);
 *   - owners_flow_sent, called by flowscope.c's TC program (built with FS_OWNERS) for each new
 *     flow it sends, never per packet: a UDP or ICMP flow whose socket no hook above announced
 *     (a UDP socket that connect()s and send()s, a ping or raw socket) is announced with its
 *     4-tuple, from the socket of the packet itself.
 * Cgroup hooks instead of kprobes or fentry: they run on kernels locked down against reading
 * kernel memory (this one), they need no kernel headers, and bpf_link detaches them when the
 * process dies. Each announcement is a struct sock_event on the ring buffer sock_events.
 */
#include <uapi/linux/bpf.h>
#include "flowscope.h"

/* the address families of <linux/socket.h>, without its compile time */
#define AF_INET_  2
#define AF_INET6_ 10

BPF_RINGBUF_OUTPUT(sock_events, SOCK_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(sock_counters, __u64, SCNT_MAX);
BPF_TABLE("lru_hash", __u64, struct sock_owner, owners, SOCK_ENTRIES);
BPF_TABLE("lru_hash", __u64, __u16, announced, SOCK_ENTRIES);
BPF_TABLE("lru_hash", __u64, struct tcp_health, tcp_health, HEALTH_ENTRIES);

static __always_inline void bump(__u32 idx)
{
    __u64 *c = sock_counters.lookup(&idx);
    if (c)
        *c += 1;
}

static __always_inline void current_owner(struct sock_owner *o)
{
    o->pid = bpf_get_current_pid_tgid() >> 32;
    o->uid = (__u32)bpf_get_current_uid_gid();
    o->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(o->comm, sizeof(o->comm));
}

static __always_inline void send_event(struct sock_event *ev, __u64 cookie, __u8 kind)
{
    struct sock_owner *o = owners.lookup(&cookie);
    if (o)
        __builtin_memcpy(&ev->owner, o, sizeof(*o));
    else
        bump(SCNT_NO_OWNER);
    ev->cookie = cookie;
    ev->kind = kind;
    ev->timestamp = bpf_ktime_get_ns();
    if (sock_events.ringbuf_output(ev, sizeof(*ev), 0) != 0)
        bump(SCNT_RINGBUF_FULL);
    else
        bump(SCNT_EVENTS);
}

static __always_inline __u8 fs_family(__u32 family)
{
    return family == AF_INET_ ? FS_AF_INET : family == AF_INET6_ ? FS_AF_INET6 : 0;
}

int owners_create(struct bpf_sock *sk)
{
    struct sock_owner o = {};
    __u64 cookie = bpf_get_socket_cookie(sk);
    current_owner(&o);
    owners.update(&cookie, &o);
    return 1;   /* allow: flowscope never changes what a program may do */
}

/* An established connection: its 4-tuple, and from now on the callbacks that keep its health
 * current (each retransmission, RTT sample and state change of this socket only). */
static __always_inline void health_start(struct bpf_sock_ops *skops)
{
    struct tcp_health h = {};
    h.family = fs_family(skops->family);
    if (!h.family)
        return;
    bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_RETRANS_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG |
                                         BPF_SOCK_OPS_STATE_CB_FLAG);
    h.netns = bpf_get_netns_cookie(skops);
    h.lport = skops->local_port;
    h.rport = bpf_ntohl(skops->remote_port);
    if (h.family == FS_AF_INET) {
        __u32 l = skops->local_ip4, r = skops->remote_ip4;
        __builtin_memcpy(h.laddr, &l, 4);
        __builtin_memcpy(h.raddr, &r, 4);
    } else {
        __u32 l6[4] = {skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2],
                       skops->local_ip6[3]};
        __u32 r6[4] = {skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
                       skops->remote_ip6[3]};
        __builtin_memcpy(h.laddr, l6, 16);
        __builtin_memcpy(h.raddr, r6, 16);
    }
    h.retrans = skops->total_retrans;
    h.srtt_us = skops->srtt_us >> 3;
    h.rtt_min_us = skops->rtt_min;
    __u64 cookie = bpf_get_socket_cookie(skops);
    tcp_health.update(&cookie, &h);
}

#ifdef ICSK_CA_STATE
/* A RETRANS callback: the segments the kernel has just added to total_retrans (args[1]; the
 * callback comes only after it added them, also when sending them then failed), by the
 * socket's congestion state (icsk_ca_state, a bitfield at offsets from the kernel's BTF). */
static __always_inline void retrans_kind(struct bpf_sock_ops *skops, struct tcp_health *h)
{
    __u32 segs = skops->args[1];
    __u8 state = 0;
    struct bpf_sock *sk = skops->sk;
    void *tp = sk ? (void *)bpf_skc_to_tcp_sock(sk) : 0;
    if (tp)
        bpf_probe_read_kernel(&state, 1, tp + ICSK_CA_STATE);
    state = (state >> ICSK_CA_STATE_SHIFT) & 0x1F;
    if (state == 3)                 /* TCP_CA_Recovery */
        h->retrans_fast += segs;
    else if (state == 4)            /* TCP_CA_Loss */
        h->retrans_rto += segs;
    else
        h->retrans_probe += segs;
}
#endif

static __always_inline void health_update(struct bpf_sock_ops *skops, __u32 op)
{
    __u64 cookie = bpf_get_socket_cookie(skops);
    struct tcp_health *h = tcp_health.lookup(&cookie);
    if (!h)
        return;
#ifdef ICSK_CA_STATE
    if (op == BPF_SOCK_OPS_RETRANS_CB)
        retrans_kind(skops, h);
#endif
    h->retrans = skops->total_retrans;
    /* The RTT callback comes once per round trip (when a window's data is acknowledged),
     * before the socket stores the new smoothed RTT, which it passes as args[1] (8 times
     * microseconds, as srtt_us) since Linux 6.10; earlier kernels pass 0 and the socket's
     * previous value stands in. Between two callbacks the socket's RTT moves with each ACK:
     * what flowscope shows is at most one round trip old. */
    __u32 srtt = op == BPF_SOCK_OPS_RTT_CB ? skops->args[1] : 0;
    h->srtt_us = (srtt ? srtt : skops->srtt_us) >> 3;
    h->rtt_min_us = skops->rtt_min;
}

int owners_sockops(struct bpf_sock_ops *skops)
{
    __u32 op = skops->op;
    __u8 kind;
    if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        health_start(skops);
        return 1;
    }
    if (op == BPF_SOCK_OPS_RETRANS_CB || op == BPF_SOCK_OPS_RTT_CB || op == BPF_SOCK_OPS_STATE_CB) {
        health_update(skops, op);
        return 1;
    }
    if (op == BPF_SOCK_OPS_TCP_CONNECT_CB)
        kind = FS_SOCK_CONNECT;
    else if (op == BPF_SOCK_OPS_TCP_LISTEN_CB)
        kind = FS_SOCK_LISTEN;
    else
        return 1;
    struct sock_event ev = {};
    ev.family = fs_family(skops->family);
    if (!ev.family)
        return 1;
    ev.proto = IPPROTO_TCP_;
    ev.netns = bpf_get_netns_cookie(skops);
    ev.lport = skops->local_port;
    if (ev.family == FS_AF_INET) {
        __u32 l = skops->local_ip4;
        __builtin_memcpy(ev.laddr, &l, 4);
    } else {
        __u32 l6[4] = {skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2],
                       skops->local_ip6[3]};
        __builtin_memcpy(ev.laddr, l6, 16);
    }
    if (kind == FS_SOCK_CONNECT) {
        ev.rport = bpf_ntohl(skops->remote_port);
        if (ev.family == FS_AF_INET) {
            __u32 r = skops->remote_ip4;
            __builtin_memcpy(ev.raddr, &r, 4);
        } else {
            __u32 r6[4] = {skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
                           skops->remote_ip6[3]};
            __builtin_memcpy(ev.raddr, r6, 16);
        }
    }
    send_event(&ev, bpf_get_socket_cookie(skops), kind);
    return 1;
}

/* v6: the IPv6 hook, the only one the verifier lets read src_ip6 (a constant after inlining) */
static __always_inline int post_bind(struct bpf_sock *sk, const int v6)
{
    struct sock_event ev = {};
    ev.family = v6 ? FS_AF_INET6 : FS_AF_INET;
    ev.proto = sk->protocol;
    ev.lport = sk->src_port;
    if (!v6) {
        __u32 l = sk->src_ip4;
        __builtin_memcpy(ev.laddr, &l, 4);
    } else {
        __u32 l6[4] = {sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]};
        __builtin_memcpy(ev.laddr, l6, 16);
    }
    ev.netns = bpf_get_netns_cookie(sk);
    __u64 cookie = bpf_get_socket_cookie(sk);
    __u16 port = ev.lport;
    announced.update(&cookie, &port);
    send_event(&ev, cookie, FS_SOCK_BIND);
    return 1;
}

int owners_post_bind4(struct bpf_sock *sk) { return post_bind(sk, 0); }
int owners_post_bind6(struct bpf_sock *sk) { return post_bind(sk, 1); }

static __always_inline int sendmsg(struct bpf_sock_addr *ctx)
{
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    __u16 port = sk->src_port;
    __u16 *seen = announced.lookup(&cookie);
    if (port == 0 || (seen && *seen == port))
        return 1;
    announced.update(&cookie, &port);
    struct sock_event ev = {};
    ev.family = fs_family(sk->family);
    if (!ev.family)
        return 1;
    ev.proto = sk->protocol;
    ev.lport = port;
    ev.netns = bpf_get_netns_cookie(ctx);
    send_event(&ev, cookie, FS_SOCK_BIND);
    return 1;
}

int owners_sendmsg4(struct bpf_sock_addr *ctx) { return sendmsg(ctx); }
int owners_sendmsg6(struct bpf_sock_addr *ctx) { return sendmsg(ctx); }

/* A new flow sent from this host (flowscope.c, TC egress, once per flow): UDP and ICMP flows
 * whose socket did not announce this port (TCP connections and listeners have sock_ops, bound
 * and sendto() ports the hooks above) are announced with the flow's 4-tuple. A packet without
 * a socket (forwarded) or from a socket older than the hooks is left alone. */
static __always_inline void owners_flow_sent(void *ctx, struct flow_event *fev)
{
    if (fev->proto != IPPROTO_UDP_ && fev->proto != IPPROTO_ICMP_ && fev->proto != IPPROTO_ICMPV6_)
        return;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    if (!cookie || !owners.lookup(&cookie))
        return;
    __u16 port = bpf_ntohs(fev->sport);
    __u16 *seen = announced.lookup(&cookie);
    if (seen && *seen == port && fev->proto == IPPROTO_UDP_)
        return;     /* its port is known: bound, or announced by its first sendto() */
    struct sock_event ev = {};
    ev.family = fev->family;
    ev.proto = fev->proto;
    ev.netns = bpf_get_netns_cookie(ctx);
    __builtin_memcpy(ev.laddr, fev->saddr, 16);
    __builtin_memcpy(ev.raddr, fev->daddr, 16);
    ev.lport = port;
    ev.rport = bpf_ntohs(fev->dport);
    send_event(&ev, cookie, FS_SOCK_CONNECT);
}
