/*
 * pcapfile.c - capture-file reader (see pcapfile.h for the contract): the
 * API, which picks a reader per file. The mmap reader walks classic pcap
 * records in place (pcapfile_mmap.c); the libpcap reader copies each packet
 * from pcap_next_ex() into an arena (pcapfile_libpcap.c). Keep libbpf/libxdp
 * code out of these files: <pcap/pcap.h> and <linux/bpf.h> both define
 * struct bpf_insn.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pcapfile_internal.h"

_Static_assert(sizeof(struct ft_pkt) == PF_PKT_SIZE, "ft_pkt size");
_Static_assert(offsetof(struct ft_pkt, data) == 0, "ft_pkt.data");
_Static_assert(offsetof(struct ft_pkt, caplen) == 8, "ft_pkt.caplen");
_Static_assert(offsetof(struct ft_pkt, wirelen) == 12, "ft_pkt.wirelen");
_Static_assert(offsetof(struct ft_pkt, ts_ns) == 16, "ft_pkt.ts_ns");
_Static_assert(offsetof(struct ft_pkt, ifindex) == 24, "ft_pkt.ifindex");
_Static_assert(offsetof(struct ft_pkt, vlan_tci) == 28, "ft_pkt.vlan_tci");
_Static_assert(offsetof(struct ft_pkt, vlan_valid) == 30, "ft_pkt.vlan_valid");

/* "-" (stdin), a FIFO, a character device, a socket: read once, as a
 * stream, by libpcap. One stat(), no open(): opening a FIFO to look at it
 * would use up its writer. */
static int pf_is_stream(const char *path)
{
    struct stat sb;

    if (strcmp(path, "-") == 0)
        return 1;
    return stat(path, &sb) == 0 && !S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode);
}

struct pf_reader *pf_open(const char *path, int force_libpcap, char *errbuf,
                          int *err)
{
    struct pf_reader *r;
    int rc = 0;

    errbuf[0] = '\0';
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(errbuf, PF_ERRBUF_SIZE, "%s: out of memory", path);
        *err = -ENOMEM;
        return NULL;
    }
    r->fd = -1;
    if (!force_libpcap && !pf_is_stream(path))
        rc = pf_mm_open(r, path, errbuf);
    if (rc == 0)
        rc = pf_lp_open(r, path, errbuf);
    if (rc < 0) {
        pf_close(r);
        *err = rc;
        return NULL;
    }
    *err = 0;
    return r;
}

void pf_close(struct pf_reader *r)
{
    if (r == NULL)
        return;
    pf_mm_close(r);
    pf_lp_close(r);
    free(r);
}

uint32_t pf_linktype(const struct pf_reader *r) { return r->linktype; }
int pf_snaplen(const struct pf_reader *r) { return r->snaplen; }
int pf_is_mmap(const struct pf_reader *r) { return r->is_mmap; }
uint64_t pf_windows(const struct pf_reader *r) { return r->windows; }

long pf_next_batch(struct pf_reader *r, void *pkts, size_t cap)
{
    struct ft_pkt *out = pkts;
    long n;

    if (r == NULL || pkts == NULL || cap == 0)
        return -EINVAL;            /* 0 would read as end of file */
    if (r->err)
        return r->err;
    if (r->is_mmap)
        n = (long)pf_mm_batch(r, out, cap);
    else
        n = pf_lp_batch(r, out, cap);
    if (n > 0) {
        r->st.packets += (uint64_t)n;
        r->st.batches++;
        return n;
    }
    return r->err;
}

void pf_stats(const struct pf_reader *r, struct pf_stats *out)
{
    *out = r->st;
}

const char *pf_errmsg(const struct pf_reader *r)
{
    return r->errmsg;
}
