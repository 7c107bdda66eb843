/* bare.c - the floor of every benchmark: programs that do nothing.
 *
 * flowscope bench runs them next to flowscope.c through BPF_PROG_TEST_RUN, the same way and in
 * the same rounds, so each measurement is reported as a ratio to what the kernel charges for
 * running any XDP (bare_xdp) or TC (bare_tc) program at all.
 */
#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>

int bare_xdp(struct xdp_md *ctx)
{
    return XDP_PASS;
}

int bare_tc(struct __sk_buff *skb)
{
    return TC_ACT_UNSPEC;
}
