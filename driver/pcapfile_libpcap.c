/*
 * pcapfile_libpcap.c - the libpcap reader (see pcapfile.h, "Two readers
 * behind one API"): pcapng, non-regular files, the classic-pcap variants
 * only libpcap implements, and force_libpcap. Each packet is copied from
 * pcap_next_ex() into an arena the reader owns. Keep libbpf/libxdp code out
 * of this file: <pcap/pcap.h> and <linux/bpf.h> both define struct bpf_insn.
 */
#define _GNU_SOURCE
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

/* The file handed to libpcap: its first 24 bytes are read here first (so
 * that a classic header's whole link-type field is known: libpcap keeps
 * only part of it), then handed back to libpcap before the rest. Works on
 * a stream too: nothing is read twice. "-" is a duplicate of fd 0, so that
 * pf_close() leaves stdin open. */
struct lp_src {
    int fd;
    size_t len, pos;               /* peeked bytes, handed back so far */
    uint8_t head[24];
};

static ssize_t lp_src_read(void *cookie, char *buf, size_t size)
{
    struct lp_src *s = cookie;
    ssize_t n;

    if (s->pos < s->len) {
        size_t k = s->len - s->pos < size ? s->len - s->pos : size;
        memcpy(buf, s->head + s->pos, k);
        s->pos += k;
        return (ssize_t)k;
    }
    do
        n = read(s->fd, buf, size);
    while (n < 0 && errno == EINTR);
    return n;
}

static int lp_src_close(void *cookie)
{
    struct lp_src *s = cookie;
    int rc = close(s->fd);

    free(s);
    return rc;
}

static FILE *lp_fopen(const char *path, struct lp_src **out)
{
    static const cookie_io_functions_t io = {
        .read = lp_src_read, .write = NULL, .seek = NULL, .close = lp_src_close,
    };
    struct lp_src *s = calloc(1, sizeof(*s));
    FILE *fp;
    int e;

    if (s == NULL)
        return NULL;
    if (strcmp(path, "-") == 0)
        s->fd = fcntl(0, F_DUPFD_CLOEXEC, 3);
    else
        s->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (s->fd < 0)
        goto fail;
    while (s->len < sizeof(s->head)) {
        ssize_t n = read(s->fd, s->head + s->len, sizeof(s->head) - s->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto fail;
        if (n == 0)
            break;
        s->len += (size_t)n;
    }
    fp = fopencookie(s, "rb", io);
    if (fp == NULL)
        goto fail;
    *out = s;
    return fp;
fail:
    e = errno;
    if (s->fd >= 0)
        close(s->fd);
    free(s);
    errno = e;
    return NULL;
}

/* A classic pcap header's whole link-type field, or 0 (pcapng, short). */
static uint32_t lp_classic_linktype(const uint8_t *h, size_t len)
{
    uint32_t magic, lt;

    if (len < 24)
        return 0;
    memcpy(&magic, h, 4);
    memcpy(&lt, h + 20, 4);
    if (magic == 0xa1b2c3d4 || magic == 0xa1b23c4d)
        return lt;
    if (magic == 0xd4c3b2a1 || magic == 0x4d3cb2a1)
        return __builtin_bswap32(lt);
    return 0;
}

int pf_lp_open(struct pf_reader *r, const char *path, char *errbuf)
{
    char pbuf[PCAP_ERRBUF_SIZE];
    struct lp_src *src = NULL;
    FILE *fp = lp_fopen(path, &src);
    uint32_t whole;

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
    r->linktype = (uint32_t)dlt_to_linktype(pcap_datalink(r->pcap));
    whole = lp_classic_linktype(src->head, src->len);  /* src lives as fp */
    if (whole & PF_LT_RESERVED1)
        r->linktype = whole;       /* not a link type + FCS annotation */
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
