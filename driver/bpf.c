/*
 * bpf.c - classic BPF programs for the ring: tcpdump expressions compiled
 * by libpcap on a LIVE handle of the capture interface (a dead handle never
 * emits the kernel's VLAN-metadata loads, so `vlan 100` would never match a
 * stripped tag), and the drop-all program used during set-up.
 * Kept apart from any libbpf code: <pcap/pcap.h> defines struct bpf_insn.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <pcap/pcap.h>

#include "ring.h"

_Static_assert(sizeof(struct ring_insn) == sizeof(struct bpf_insn),
               "ring_insn must match bpf_insn");

#define RING_BPF_RET_K (0x06 | 0x00)   /* BPF_RET | BPF_K */

int ring_filter_drop_all(struct ring_insn *out, uint32_t cap)
{
    if (cap < 1)
        return -ENOSPC;
    out[0].code = RING_BPF_RET_K;
    out[0].jt = 0;
    out[0].jf = 0;
    out[0].k = 0;
    return 1;
}

int ring_filter_compile(const char *iface, const char *expr, uint32_t snaplen,
                        struct ring_insn *out, uint32_t cap,
                        char *err, size_t errlen)
{
    char ebuf[PCAP_ERRBUF_SIZE];
    struct bpf_program prog;
    pcap_t *p;
    uint32_t i;
    int rc;

    if (!expr || !out || snaplen == 0)
        return -EINVAL;
    ebuf[0] = '\0';
    if (!iface) {
        /* syntax check only: Ethernet, no interface, no privileges */
        p = pcap_open_dead(DLT_EN10MB, (int)snaplen);
        if (!p) {
            snprintf(err, errlen, "pcap_open_dead failed");
            return -ENOMEM;
        }
        goto compile;
    }
    p = pcap_create(iface, ebuf);
    if (!p) {
        snprintf(err, errlen, "%s", ebuf);
        return -ENODEV;
    }
    /* small live handle: we only need its link type and VLAN handling */
    pcap_set_snaplen(p, (int)snaplen);
    pcap_set_buffer_size(p, 64 * 1024);
    pcap_set_timeout(p, 1);
    rc = pcap_activate(p);
    if (rc < 0) {
        snprintf(err, errlen, "pcap_activate %s: %s", iface, pcap_geterr(p));
        pcap_close(p);
        return rc == PCAP_ERROR_NO_SUCH_DEVICE ? -ENODEV
             : rc == PCAP_ERROR_PERM_DENIED ? -EPERM : -EIO;
    }
compile:
    /* A dead handle does not optimize: its VLAN code differs from a live
     * handle's, and the optimizer would refuse e.g. "udp and vlan 100" as
     * rejecting every packet, which the live compile accepts. */
    if (pcap_compile(p, &prog, expr, iface ? 1 : 0, PCAP_NETMASK_UNKNOWN) < 0) {
        snprintf(err, errlen, "%s", pcap_geterr(p));
        pcap_close(p);
        return -EINVAL;
    }
    pcap_close(p);
    if (prog.bf_len > cap) {
        snprintf(err, errlen, "filter has %u instructions, max %u",
                 prog.bf_len, cap);
        pcap_freecode(&prog);
        return -ENOSPC;
    }
    for (i = 0; i < prog.bf_len; i++) {
        out[i].code = prog.bf_insns[i].code;
        out[i].jt = prog.bf_insns[i].jt;
        out[i].jf = prog.bf_insns[i].jf;
        out[i].k = prog.bf_insns[i].k;
        /* accept returns carry the snap length: TPACKET_V3 has none */
        if (out[i].code == RING_BPF_RET_K && out[i].k != 0)
            out[i].k = snaplen;
    }
    pcap_freecode(&prog);
    return (int)i;
}
