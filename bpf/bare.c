/* bare.c - the floor of every benchmark: an XDP program that does nothing.
 *
 * flowscope bench runs it next to flowscope.c through BPF_PROG_TEST_RUN, the same way and in
 * the same rounds, so each measurement is reported as a ratio to what the kernel charges for
 * running any XDP program at all.
 */
#include <uapi/linux/bpf.h>

int bare_xdp(struct xdp_md *ctx)
{
    return XDP_PASS;
}
