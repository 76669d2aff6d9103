/*
 * pcapfile_libpcap.c - the libpcap reader (see pcapfile.h, "Two readers
 * behind one API"): pcapng, non-regular files, the classic-pcap variants
 * only libpcap implements, and force_libpcap. Each packet is copied from
 * pcap_next_ex() into an arena the reader owns. Keep libbpf/libxdp code out
 * of this file: <pcap/pcap.h> and <linux/bpf.h> both define struct bpf_insn.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pcapfile_internal.h"

#define PF_ARENA_MIN (4u << 20)

static int dlt_to_linktype(int dlt)
{
    switch (dlt) {
    /* the DLTs whose LINKTYPE differs (libpcap's dlt_to_linktype is
     * internal); the values are the platform's <pcap/dlt.h> */
    case DLT_ATM_RFC1483: return 100;
    case DLT_RAW: return 101;
    case DLT_SLIP_BSDOS: return 102;
    case DLT_PPP_BSDOS: return 103;
    default: return dlt;
    }
}

/* "-" is stdin: a duplicate of fd 0, so that pf_close() leaves it open. */
static FILE *lp_fopen(const char *path)
{
    int fd;
    FILE *fp;

    if (strcmp(path, "-") != 0)
        return fopen(path, "rbe");
    fd = fcntl(0, F_DUPFD_CLOEXEC, 3);
    if (fd < 0)
        return NULL;
    fp = fdopen(fd, "rb");
    if (fp == NULL) {
        int e = errno;
        close(fd);
        errno = e;
    }
    return fp;
}

int pf_lp_open(struct pf_reader *r, const char *path, char *errbuf)
{
    char pbuf[PCAP_ERRBUF_SIZE];
    FILE *fp = lp_fopen(path);

    if (fp == NULL) {
        int e = errno;
        snprintf(errbuf, PF_ERRBUF_SIZE, "%s: %s", path, strerror(e));
        return -e;
    }
    pbuf[0] = '\0';
    r->pcap = pcap_fopen_offline_with_tstamp_precision(
        fp, PCAP_TSTAMP_PRECISION_NANO, pbuf);
    if (r->pcap == NULL) {
        fclose(fp);
        snprintf(errbuf, PF_ERRBUF_SIZE, "%s: %s", path, pbuf);
        return -EINVAL;
    }
    r->linktype = dlt_to_linktype(pcap_datalink(r->pcap));
    r->snaplen = pcap_snapshot(r->pcap);
    r->arena_len = PF_ARENA_MIN;
    r->arena = malloc(r->arena_len);
    if (r->arena == NULL) {
        snprintf(errbuf, PF_ERRBUF_SIZE, "%s: out of memory", path);
        return -ENOMEM;
    }
    return 0;
}

long pf_lp_batch(struct pf_reader *r, struct ft_pkt *out, size_t cap)
{
    size_t n = 0, used = 0;

    while (n < cap && !r->eof) {
        const struct pcap_pkthdr *h;
        const u_char *d;
        uint64_t sec;

        if (r->pend_hdr != NULL) {
            h = r->pend_hdr;
            d = r->pend_data;
            r->pend_hdr = NULL;
        } else {
            struct pcap_pkthdr *hh;
            int rc = pcap_next_ex(r->pcap, &hh, &d);
            if (rc == PCAP_ERROR_BREAK) {
                r->eof = 1;
                break;
            }
            if (rc != 1) {
                const char *msg = pcap_geterr(r->pcap);
                snprintf(r->errmsg, PF_ERRBUF_SIZE, "%s", msg);
                if (strstr(msg, "different from the type of the first"))
                    r->err = -EOPNOTSUPP;  /* multi-link-type pcapng */
                else
                    fail(r, -EBADMSG);
                break;
            }
            h = hh;
        }
        if (h->caplen > r->arena_len - used) {
            if (n > 0) {
                /* libpcap's buffer stays valid until pcap_next_ex(). */
                r->pend_hdr = h;
                r->pend_data = d;
                break;
            }
            uint8_t *a = realloc(r->arena, h->caplen);
            if (a == NULL) {
                snprintf(r->errmsg, PF_ERRBUF_SIZE, "out of memory");
                r->err = -ENOMEM;
                break;
            }
            r->arena = a;
            r->arena_len = h->caplen;
        }
        memcpy(r->arena + used, d, h->caplen);
        out[n].data = r->arena + used;
        out[n].caplen = h->caplen;
        out[n].wirelen = h->len;
        /* classic pcap seconds are unsigned 32-bit; libpcap sign-extends */
        sec = h->ts.tv_sec < 0 ? (uint32_t)h->ts.tv_sec : (uint64_t)h->ts.tv_sec;
        out[n].ts_ns = sec * 1000000000u + (uint64_t)h->ts.tv_usec;
        out[n].ifindex = 0;
        out[n].vlan_tci = 0;
        out[n].vlan_valid = 0;
        out[n].pad = 0;
        used += h->caplen;
        r->st.cap_bytes += h->caplen;
        r->st.wire_bytes += h->len;
        n++;
    }
    return (long)n;
}

void pf_lp_close(struct pf_reader *r)
{
    if (r->pcap != NULL)
        pcap_close(r->pcap);
    free(r->arena);
}
