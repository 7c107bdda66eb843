/* floor.c - what the per-CPU flow hash costs on its own: the floor under flowscope.c.
 *
 * flowscope bench runs hash_floor_xdp on the hot IPv4 TCP frame next to flowscope.c. It does for
 * a known flow only what no flow tracker built on a per-CPU hash can skip: one lookup in a map
 * of the same key and value types and an update of the value. The key is read from the fixed
 * offsets of an untagged IPv4 frame without options (no parsing, counters or clock), so the
 * difference between flowscope.c and this program is the cost of everything else.
 */
#include <uapi/linux/bpf.h>
#include "flowscope.h"

#ifdef FLOOR_VALUE32
/* the same counters packed into 32 bytes (32-bit packets, 32-bit times): what a smaller value
 * would save per packet, measured by flowscope bench beside the 48-byte one */
struct floor_value {
    __u32 packets;
    __u32 first_seen;
    __u64 bytes;
    __u64 ip_bytes;
    __u32 last_seen;
    __u8  tcp_flags;
    __u8  pad[3];
};
#define flow_value floor_value
#endif

BPF_TABLE("percpu_hash", struct flow_key4, struct flow_value, floor4, FLOW_ENTRIES);

int hash_floor_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;

    if (data + 38 > end) /* Ethernet, a 20-byte IPv4 header, the ports */
        return XDP_PASS;
    struct flow_key4 key = {};
    key.ifindex = 1;
    key.proto = *(__u8 *)(data + 23);
    key.saddr = *(__u32 *)(data + 26);
    key.daddr = *(__u32 *)(data + 30);
    key.sport = *(__u16 *)(data + 34);
    key.dport = *(__u16 *)(data + 36);
    __u64 len = end - data;
    struct flow_value *v = floor4.lookup(&key);
    if (v) {
        v->packets += 1;
        v->bytes += len;
        v->last_seen = v->packets;
        return XDP_PASS;
    }
    struct flow_value nv = {.packets = 1, .bytes = len};
    floor4.insert(&key, &nv);
    return XDP_PASS;
}
