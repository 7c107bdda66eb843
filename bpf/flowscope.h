/* flowscope.h - the contract between the kernel programs and Python.
 *
 * Every struct and constant here has a byte-for-byte mirror in flowscope/abi.py, and
 * tests/unit/test_abi.py pins sizes and offsets. Change both in the same commit.
 *
 * Keys are split by family: IPv4 flows use a 24-byte key, IPv6 flows a 48-byte key, so the
 * hash of the common case is cheap. Both end in 4 bytes of zero padding: the kernel compares a
 * key in 8-byte words and finishes a shorter tail byte by byte, and the padded 24-byte key was
 * measured about 2 ns a packet faster than the 20 bytes of its fields, through BPF_PROG_TEST_RUN
 * over several loads of each (README, Performance). Addresses and ports are kept in network
 * byte order, as they stand in the packet; user space converts them once when it decodes.
 */
#ifndef FLOWSCOPE_H
#define FLOWSCOPE_H

/* Tunables, set with -D from Python (flowscope/kernel/program.py). */
#ifndef FLOW_ENTRIES
#define FLOW_ENTRIES 65536          /* entries of each flow map (IPv4 and IPv6) */
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 256           /* ring buffer size in pages (power of two) */
#endif
#ifndef FLOOD_ENTRIES
#define FLOOD_ENTRIES 1024          /* entries of the flood table (see struct flood_key) */
#endif
#ifndef EVENT_BUDGET
#define EVENT_BUDGET 2048           /* ring buffer records each CPU may write per window */
#endif
#define EVENT_WINDOW_NS 1000000000ULL   /* the announcement budget's window: 1 s */

#define FS_AF_INET   4
#define FS_AF_INET6  6

#define FS_DIR_INGRESS 0
#define FS_DIR_EGRESS  1

/* IPv4 flow key: 24 bytes. */
struct flow_key4 {
    __u32 ifindex;      /* the interface it was received on (ingress) or sent from (egress) */
    __u32 saddr;        /* network order */
    __u32 daddr;        /* network order */
    __u16 sport;        /* network order; 0 when the protocol has none */
    __u16 dport;        /* network order; ICMP: type * 256 + code */
    __u16 vlan;         /* VLAN id of the outermost tag, host order; 0 untagged */
    __u8  proto;        /* IP protocol */
    __u8  direction;    /* FS_DIR_*: which program counted it (XDP ingress, TC egress) */    __u8  pad[4];       /* always zero: a multiple of 8 bytes (see above) */
};

/* IPv6 flow key: 48 bytes. */
struct flow_key6 {
    __u32 ifindex;
    __u8  saddr[16];
    __u8  daddr[16];
    __u16 sport;
    __u16 dport;
    __u16 vlan;
    __u8  proto;
    __u8  direction;    __u8  pad[4];
};

/* Flow value, one per CPU: 48 bytes. */
struct flow_value {
    __u64 packets;
    __u64 bytes;        /* frame length as XDP sees it; on egress skb->len (a GSO packet whole) */
    __u64 ip_bytes;     /* IPv4 total length; IPv6 40 + payload length */
    __u64 first_seen;   /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
    __u64 last_seen;
    __u8  tcp_flags;    /* OR of every TCP flags byte seen */
    __u8  pad[3];
    __u32 block_gen;    /* FS_BLOCK: the block_gen under which this CPU last saw the flow pass
                         * the rules (0 until then); not summed, not read by user space */
};

/* Ring buffer record, sent once when a flow is first inserted, or when it could not be
 * inserted because the map was full (flags & FS_EVENT_MAP_FULL): 64 bytes. */
#define FS_EVENT_MAP_FULL 1
struct flow_event {
    __u64 timestamp;    /* bpf_ktime_get_ns() */
    __u32 ifindex;
    __u32 length;       /* frame length of the first packet */
    __u8  saddr[16];    /* IPv4: first four bytes, rest zero */
    __u8  daddr[16];
    __u16 sport;        /* network order */
    __u16 dport;        /* network order */
    __u16 vlan;
    __u8  proto;
    __u8  family;       /* FS_AF_* */
    __u8  direction;
    __u8  flags;        /* FS_EVENT_* */
    __u8  pad[6];
};

/* Indexes of cpu_state.counters[direction]. Every packet a program sees ends in exactly one
 * of: a flow, CNT_NON_IP, CNT_MALFORMED, CNT_MAP_FULL. CNT_TRUNCATED packets are also in a
 * flow; CNT_FLOWS_CREATED and CNT_RINGBUF_FULL count events, not packets; CNT_BYTES is the
 * frame bytes of every packet CNT_PACKETS counts (the collector's total bit rate, which must
 * include what no flow could take). On egress a GSO packet counts as its segments everywhere
 * packets are counted, and with its whole length in bytes. CNT_MAP_FULL packets are also in the
 * flood table (struct flood_key), except CNT_FLOOD_OTHER of them, which found that table full
 * too; CNT_EVENTS_LIMITED counts the records the announcement budget held back (a new flow, or
 * a map-full packet, that was counted but not announced). */
enum fs_counter {
    CNT_PACKETS = 0,
    CNT_FLOWS_CREATED = 1,
    CNT_NON_IP = 2,
    CNT_MALFORMED = 3,
    CNT_TRUNCATED = 4,
    CNT_MAP_FULL = 5,
    CNT_RINGBUF_FULL = 6,
    CNT_BYTES = 7,
    CNT_FLOOD_OTHER = 8,
    CNT_EVENTS_LIMITED = 9,
    CNT_MAX = 10,
};

#define FS_DIRECTIONS 2

/* The one entry of the per-CPU array cpu_state: the counters of each direction (indexed by
 * FS_DIR_*), the clock cache that lets the hot path skip bpf_ktime_get_ns() (see now_ns in
 * flowscope.c), the announcement budget's window, and the jiffy at which each flow map (IPv4,
 * IPv6) and the flood table were last found full (no insert is tried again in that jiffy),
 * shared by both programs: 216 bytes. */
struct cpu_state {
    __u64 counters[FS_DIRECTIONS][CNT_MAX];
    __u64 clock_jiffies;
    __u64 clock_ns;
    __u64 event_window;     /* start of the current announcement window, ns */
    __u64 event_count;      /* records written in it */
    __u64 full_jiffies[3];  /* flows4, flows6, floods: the jiffy (+1) of the last failed insert */
};

/* The flood table: packets no flow map could take (CNT_MAP_FULL) are still counted, per
 * source prefix (IPv4 /24, IPv6 /64), destination port, protocol, TCP flags, interface and
 * direction, in a small per-CPU hash the collector empties every tick (lookup-and-delete
 * batch). So a flood of new flows keeps its shape when it is what filled the map. 24 bytes. */
struct flood_key {
    __u8  prefix[8];    /* the source prefix, network order: IPv4 /24 (3 bytes), IPv6 /64 */
    __u32 ifindex;
    __u16 dport;        /* network order; ICMP: type * 256 + code */
    __u8  proto;
    __u8  tcp_flags;    /* this packet's flags byte (not an OR) */
    __u8  family;       /* FS_AF_* */
    __u8  direction;    /* FS_DIR_* */
    __u8  pad[6];       /* always zero: 24 bytes, hashed in whole words as the flow keys */
};

struct flood_value {
    __u64 packets;
    __u64 bytes;
};

/* Blocking, built in only with -DFS_BLOCK (`record` or `live` --allow-block): the XDP program
 * drops (XDP_DROP) received packets that match a rule, after counting them in their flow. A
 * rule is a source prefix (a host: /32, /128), a target (protocol and destination port) from
 * anywhere, or a target from a source prefix. Per family two LPM tries hold them: one keyed by
 * the source address (prefix rules), one by protocol, port, then source address (target
 * rules: prefix length 24 for a target from anywhere, 24 + N from a /N). Each rule's value
 * counts the packets it dropped. The rules die with the program's maps, so with flowscope,
 * also after kill -9. */
#ifndef BLOCK_ENTRIES
#define BLOCK_ENTRIES 4096          /* rules of each kind and family */
#endif
#define BLOCK_TARGET_BITS 24        /* protocol and port, before the address in a target key */

struct block_src4 {
    __u32 prefixlen;
    __u8  saddr[4];     /* network order */
};

struct block_src6 {
    __u32 prefixlen;
    __u8  saddr[16];
};

struct block_target4 {
    __u32 prefixlen;    /* 24 + the source prefix length */
    __u8  proto;
    __u8  dport[2];     /* network order */
    __u8  saddr[4];
    __u8  pad;          /* never in a prefix */
};

struct block_target6 {
    __u32 prefixlen;
    __u8  proto;
    __u8  dport[2];
    __u8  saddr[16];
    __u8  pad;
};

struct block_value {
    __u64 matched;      /* packets dropped by the rule (atomic: shared by the CPUs) */
};

/* The one entry of the array block_gen (a __u32) is the generation of the rules: user space
 * makes it larger every time it changes a trie or block_rules, after the change, never back
 * to a value used before (0 only before the first rule), so a flow value's block_gen equal to
 * it means "checked against these rules and passed". */

/* The one entry of the array block_rules: how many rules each trie holds (user space keeps
 * it), so that without rules the program looks nothing up. */
#define BLOCK_BITMAP_WORDS 1024        /* 65,536 bits */
struct block_rules {
    __u32 src4;
    __u32 src6;
    __u32 target4;
    __u32 target6;
    /* Which packets can match a rule at all, so that a packet no rule can match costs a bit
     * test, not a trie search: a source rule sets the bits of the /16s (IPv4: address bits
     * 0-15; IPv6: bits 16-31) it covers, a target rule the bit of its port. A set bit says
     * "search the trie", never "drop". */
    __u64 src4_bits[BLOCK_BITMAP_WORDS];
    __u64 src6_bits[BLOCK_BITMAP_WORDS];
    __u64 target_bits[BLOCK_BITMAP_WORDS];
};

/* Replay build only (-DFS_REPLAY, `flowscope replay`): what BPF_PROG_TEST_RUN places in front of
 * each frame of a capture as XDP metadata (between ctx->data_meta and ctx->data): 16 bytes, a
 * multiple of 4 as the kernel requires of metadata. The program then takes the packet's time,
 * its length and its interface from here instead of the clock, data_end - data and the ingress
 * device (BPF_PROG_TEST_RUN accepts only a real device as ingress_ifindex). */
struct replay_meta {
    __u64 timestamp;    /* capture time, ns since the Unix epoch: first/last seen, events */
    __u32 wire_len;     /* the frame's original length on the wire: bytes, even when cut */
    __u32 ifindex;      /* the capture's interface id + 1: the key's ifindex */
};

/* Sockets and their owners (bpf/owners.c, for `record` and `live`): one ring buffer record
 * each time a local socket gets the addresses its flows will carry, with the process that
 * created the socket, taken in that process's context (cgroup socket hooks and sock_ops on the
 * cgroup v2 root), so even a connection that lives a millisecond has its owner. User space joins
 * them with the flows (flowscope/collect/owners.py): 96 bytes. */
#ifndef SOCK_RINGBUF_PAGES
#define SOCK_RINGBUF_PAGES 256      /* the socket ring buffer, in pages (power of two): 1 MiB, *
                                     * about 10,000 sockets between two reads */
#endif
#ifndef SOCK_ENTRIES
#define SOCK_ENTRIES 65536          /* sockets whose creator is remembered (LRU) */
#endif

#define FS_SOCK_CONNECT 1   /* a TCP connection a local process opened (4-tuple known) */
#define FS_SOCK_LISTEN  2   /* a TCP port a local process listens on */
#define FS_SOCK_BIND    3   /* a UDP (or TCP) port a local process bound: bind() or the
                             * first sendto() of an unbound UDP socket */

/* Who created a socket (the value of the owners map, keyed by socket cookie). */
struct sock_owner {
    __u64 cgroup_id;    /* the creator's cgroup v2 id (the cgroup directory's inode) */
    __u32 pid;          /* the creator's process (thread group) id; 0: unknown */
    __u32 uid;
    char  comm[16];     /* the creating thread's command name, NUL padded */
};

struct sock_event {
    __u64 timestamp;    /* bpf_ktime_get_ns() */
    __u64 netns;        /* the socket's network namespace cookie (SO_NETNS_COOKIE) */
    __u64 cookie;       /* the socket's cookie (SO_COOKIE) */
    struct sock_owner owner;    /* pid 0 when the socket predates flowscope */
    __u8  laddr[16];    /* local address, network order; IPv4: first four bytes */
    __u8  raddr[16];    /* remote address; zero for LISTEN and BIND */
    __u16 lport;        /* host order */
    __u16 rport;        /* host order; zero for LISTEN and BIND */
    __u8  family;       /* FS_AF_* of the socket (an IPv6 socket may carry IPv4-mapped ones) */
    __u8  proto;        /* IP protocol */
    __u8  kind;         /* FS_SOCK_* */
    __u8  pad;
};

/* The health of a local TCP connection as its own socket sees it (bpf/owners.c, sock_ops),
 * the value of the LRU map tcp_health keyed by socket cookie: written when the connection is
 * established, then on each retransmission, RTT sample and state change. The same numbers
 * `ss -ti` gives (retrans total, rtt, minrtt). User space joins them with the connection's
 * two flows by 4-tuple: 72 bytes. */
#ifndef HEALTH_ENTRIES
#define HEALTH_ENTRIES 65536        /* TCP connections followed (LRU) */
#endif

struct tcp_health {
    __u64 netns;        /* the socket's network namespace cookie */
    __u8  laddr[16];    /* local address, network order; IPv4: first four bytes */
    __u8  raddr[16];
    __u16 lport;        /* host order */
    __u16 rport;        /* host order */
    __u8  family;       /* FS_AF_* of the socket (an IPv6 socket may carry IPv4-mapped ones) */
    __u8  pad[3];
    __u32 retrans;      /* segments retransmitted over the connection's life (total_retrans) */
    __u32 srtt_us;      /* smoothed round-trip time, microseconds */
    __u32 rtt_min_us;   /* the smallest round-trip time seen, microseconds */
    /* Of retrans, what was resent since the connection was followed, by the congestion state
     * the socket was in when it resent it (its RETRANS callback, which passes the segments
     * the kernel just added to total_retrans); 0 where the kernel's BTF has no icsk_ca_state.
     * SYN retransmissions, before the connection was established, are in retrans only. */
    __u32 retrans_fast;  /* TCP_CA_Recovery: fast retransmit (duplicate ACKs, SACK, RACK) */
    __u32 retrans_rto;   /* TCP_CA_Loss: after a retransmission timeout */
    __u32 retrans_probe; /* Open, Disorder or CWR: a tail loss probe */
};

/* Packets the kernel dropped (bpf/drops.c, a raw tracepoint on skb:kfree_skb), counted per
 * flow and drop reason in the per-CPU LRU map `drops`, and per reason alone in the per-CPU
 * array `drop_totals` (also drops of packets that are not IP). The key holds the packet's own
 * addresses and ports as it travelled, so it names the flow the flow programs counted it in:
 * user space joins the two (flowscope/collect/drops.py). 48 bytes. */
#ifndef DROP_ENTRIES
#define DROP_ENTRIES 16384          /* (flow, reason) pairs remembered (LRU) */
#endif
#define DROP_REASON_SLOTS 256       /* reasons counted alone; a larger value (a subsystem's
                                     * reasons) counts in the last slot */

struct drop_key {
    __u8  saddr[16];    /* network order; IPv4: first four bytes */
    __u8  daddr[16];
    __u32 ifindex;      /* the device the packet was on, 0 without one */
    __u32 reason;       /* the running kernel's enum skb_drop_reason */
    __u16 sport;        /* network order; 0 when the protocol has none */
    __u16 dport;        /* network order; ICMP: type * 256 + code */
    __u8  proto;
    __u8  family;       /* FS_AF_* */
    __u8  pad[2];
};

/* TCP resets (bpf/resets.c, raw tracepoints on tcp:tcp_send_reset and tcp:tcp_receive_reset),
 * counted per flow in the per-CPU LRU map `tcp_resets`: a reset the kernel sent counts in the
 * flow it went out in (direction egress, its own addresses and ports as sent), a reset it
 * received and acted on in the flow it came in with (ingress). Keyed as the flow programs key
 * those flows, less the interface (a socket has none), so user space joins the two exactly
 * (flowscope/collect/resets.py). 40 bytes. */
#ifndef RESET_ENTRIES
#define RESET_ENTRIES 16384         /* flows with resets remembered (LRU) */
#endif

struct reset_key {
    __u8  saddr[16];    /* network order; IPv4: first four bytes */
    __u8  daddr[16];
    __u16 sport;        /* network order */
    __u16 dport;        /* network order */
    __u8  family;       /* FS_AF_* */
    __u8  direction;    /* FS_DIR_EGRESS: sent; FS_DIR_INGRESS: received */
    __u8  pad[2];
};

/* The per-flow attribution budget of the drop hook (the one entry of the per-CPU array
 * drop_budget): at most DROP_BUDGET drops per CPU and jiffy are attributed to their flow (the
 * LRU map `drops`); past it a drop is counted by reason alone and in `unattributed`, so a flood
 * of packets the kernel drops (to closed ports, say) costs the hook a few reads each, not an
 * LRU insert each. 24 bytes. */
#ifndef DROP_BUDGET
#define DROP_BUDGET 256             /* 64,000 a second per CPU at HZ=250 */
#endif

struct drop_budget {
    __u64 jiffies;          /* the jiffy the count is for */
    __u64 count;            /* drops attributed in it */
    __u64 unattributed;     /* drops past the budget, since the hook was loaded */
};

/* Where in the kernel's code generic XDP frees what an XDP program dropped (the one entry of
 * the array drop_xdp_code, written by flowscope/kernel/drops.py from /proc/kallsyms: the
 * functions do_xdp_generic and netif_receive_generic_xdp, [start, end) each, 0 where not
 * found). The kernel frees those packets with kfree_skb() and no reason (NOT_SPECIFIED), where
 * its other drops in the same function say XDP; the drop hook says XDP for them too. 32 bytes. */
struct drop_xdp_code {
    __u64 start[2];
    __u64 end[2];
};

/* Indexes of the per-CPU array sock_counters. */
enum fs_sock_counter {
    SCNT_EVENTS = 0,        /* records written */
    SCNT_RINGBUF_FULL = 1,  /* records lost: the ring buffer was full */
    SCNT_NO_OWNER = 2,      /* records of sockets created before the hooks (pid 0) */
    SCNT_MAX = 3,
};

#endif /* FLOWSCOPE_H */
