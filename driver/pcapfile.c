/*
 * pcapfile.c - capture-file reader (see pcapfile.h for the contract).
 *
 * The mmap reader walks classic pcap records in place; the libpcap reader
 * copies each packet from pcap_next_ex() into an arena. Keep libbpf/libxdp
 * code out of this file: <pcap/pcap.h> and <linux/bpf.h> both define
 * struct bpf_insn.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <pcap/pcap.h>

#include "flowtable.h"
#include "pcapfile.h"

_Static_assert(sizeof(struct ft_pkt) == PF_PKT_SIZE, "ft_pkt size");
_Static_assert(offsetof(struct ft_pkt, data) == 0, "ft_pkt.data");
_Static_assert(offsetof(struct ft_pkt, caplen) == 8, "ft_pkt.caplen");
_Static_assert(offsetof(struct ft_pkt, wirelen) == 12, "ft_pkt.wirelen");
_Static_assert(offsetof(struct ft_pkt, ts_ns) == 16, "ft_pkt.ts_ns");
_Static_assert(offsetof(struct ft_pkt, ifindex) == 24, "ft_pkt.ifindex");
_Static_assert(offsetof(struct ft_pkt, vlan_tci) == 28, "ft_pkt.vlan_tci");
_Static_assert(offsetof(struct ft_pkt, vlan_valid) == 30, "ft_pkt.vlan_valid");

#define PF_FILE_HDR 24
#define PF_REC_HDR 16
#define PF_ARENA_MIN (4u << 20)

enum { SWAP_NO = 0, SWAP_YES = 1, SWAP_MAYBE = 2 }; /* caplen/len order */

struct pf_reader {
    int is_mmap;
    int linktype;
    int snaplen;
    int err;                       /* sticky negative errno, 0 if none */
    struct pf_stats st;
    char errmsg[PF_ERRBUF_SIZE];

    /* mmap reader */
    const uint8_t *map;
    size_t map_len;
    size_t off;                    /* next record header */
    int byteswap;                  /* file is in the other byte order */
    int lengths;                   /* SWAP_* */
    uint32_t frac_mult;            /* 1000 (us) or 1 (ns) */

    /* libpcap reader */
    pcap_t *pcap;
    uint8_t *arena;
    size_t arena_len;
    const struct pcap_pkthdr *pend_hdr; /* fetched, not yet handed out */
    const u_char *pend_data;
    int eof;
};

static uint32_t rd32(const uint8_t *p, int swap)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return swap ? __builtin_bswap32(v) : v;
}

static uint16_t rd16(const uint8_t *p, int swap)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return swap ? __builtin_bswap16(v) : v;
}

static void fail(struct pf_reader *r, int err)
{
    r->err = err;
    r->st.truncated_records++;
}

/* --- mmap reader ------------------------------------------------------ */

/* libpcap's max_snaplen_for_dlt() is larger than 262144 for these. */
static int big_snaplen_linktype(uint32_t lt)
{
    return lt == 220 || lt == 231 || lt == 249 || lt == 279;
}

/* libpcap rewrites pseudo-headers of these in byte-swapped files. */
static int swapped_pseudo_header(uint32_t lt)
{
    return lt == 113 || lt == 189 || lt == 220 || lt == 239 || lt == 276;
}

/* Returns 1 when the mapping is a classic pcap file the mmap reader takes,
 * 0 when libpcap should read it instead. */
static int mm_header(struct pf_reader *r)
{
    const uint8_t *h = r->map;
    uint32_t magic, lt, snap;
    uint16_t major, minor;

    if (r->map_len < PF_FILE_HDR)
        return 0;
    memcpy(&magic, h, 4);
    switch (magic) {
    case 0xa1b2c3d4: r->byteswap = 0; r->frac_mult = 1000; break;
    case 0xd4c3b2a1: r->byteswap = 1; r->frac_mult = 1000; break;
    case 0xa1b23c4d: r->byteswap = 0; r->frac_mult = 1; break;
    case 0x4d3cb2a1: r->byteswap = 1; r->frac_mult = 1; break;
    default: return 0;
    }
    major = rd16(h + 4, r->byteswap);
    minor = rd16(h + 6, r->byteswap);
    snap = rd32(h + 16, r->byteswap);
    lt = rd32(h + 20, r->byteswap) & 0xffffu;   /* drop FCS/ext bits */
    if (major == 2 && minor < 3)
        r->lengths = SWAP_YES;
    else if (major == 2 && minor == 3)
        r->lengths = SWAP_MAYBE;
    else if (major == 2 && minor == 4)
        r->lengths = SWAP_NO;
    else if (major == 543 && minor == 0)
        r->lengths = SWAP_YES;
    else
        return 0;                  /* libpcap words the error */
    if (big_snaplen_linktype(lt) || (r->byteswap && swapped_pseudo_header(lt)))
        return 0;
    r->linktype = (int)lt;
    r->snaplen = (snap == 0 || snap > PF_MAX_CAPLEN) ? PF_MAX_CAPLEN : (int)snap;
    r->off = PF_FILE_HDR;
    return 1;
}

static inline __attribute__((always_inline)) size_t
mm_walk(struct pf_reader *r, struct ft_pkt *out, size_t cap, const int swap)
{
    const uint8_t *base = r->map;
    const size_t end = r->map_len;
    const uint32_t snap = (uint32_t)r->snaplen;
    const uint64_t mult = r->frac_mult;
    size_t off = r->off, n = 0;
    uint64_t capb = 0, wireb = 0;

    while (n < cap) {
        const uint8_t *h = base + off;
        size_t left = end - off;
        uint32_t sec, frac, caplen, len, t;

        if (left == 0)
            break;
        if (left < PF_REC_HDR) {
            snprintf(r->errmsg, PF_ERRBUF_SIZE, "truncated record header "
                     "at offset %zu: only %zu bytes left", off, left);
            fail(r, -EBADMSG);
            break;
        }
        sec = rd32(h, swap);
        frac = rd32(h + 4, swap);
        caplen = rd32(h + 8, swap);
        len = rd32(h + 12, swap);
        if (__builtin_expect(r->lengths != SWAP_NO, 0) &&
            (r->lengths == SWAP_YES || caplen > len)) {
            t = caplen; caplen = len; len = t;
        }
        if (caplen > PF_MAX_CAPLEN) {
            snprintf(r->errmsg, PF_ERRBUF_SIZE, "corrupt record at offset "
                     "%zu: caplen %u above the maximum of %u", off, caplen,
                     (unsigned)PF_MAX_CAPLEN);
            fail(r, -EBADMSG);
            break;
        }
        if (caplen > left - PF_REC_HDR) {
            snprintf(r->errmsg, PF_ERRBUF_SIZE, "truncated record at offset "
                     "%zu: caplen %u, only %zu bytes left", off, caplen,
                     left - PF_REC_HDR);
            fail(r, -EBADMSG);
            break;
        }
        out[n].data = h + PF_REC_HDR;
        if (__builtin_expect(caplen > snap, 0)) {
            out[n].caplen = snap;
            r->st.clipped_records++;
        } else {
            out[n].caplen = caplen;
        }
        out[n].wirelen = len;
        out[n].ts_ns = (uint64_t)sec * 1000000000u + (uint64_t)frac * mult;
        out[n].ifindex = 0;
        out[n].vlan_tci = 0;
        out[n].vlan_valid = 0;
        out[n].pad = 0;
        capb += out[n].caplen;
        wireb += len;
        off += PF_REC_HDR + (size_t)caplen;
        n++;
    }
    r->off = off;
    r->st.cap_bytes += capb;
    r->st.wire_bytes += wireb;
    return n;
}

/* 1: mapped a classic pcap file; 0: not one (use libpcap); <0: errno. */
static int mm_open(struct pf_reader *r, const char *path, char *errbuf)
{
    struct stat sb;
    void *m;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        int e = errno;
        snprintf(errbuf, PF_ERRBUF_SIZE, "%s: %s", path, strerror(e));
        return -e;
    }
    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size < PF_FILE_HDR) {
        close(fd);
        return 0;
    }
    m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return 0;
    r->map = m;
    r->map_len = (size_t)sb.st_size;
    if (!mm_header(r)) {
        munmap(m, r->map_len);
        r->map = NULL;
        r->map_len = 0;
        return 0;
    }
    (void)madvise(m, r->map_len, MADV_SEQUENTIAL);
    r->is_mmap = 1;
    return 1;
}

/* --- libpcap reader --------------------------------------------------- */

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

static int lp_open(struct pf_reader *r, const char *path, char *errbuf)
{
    char pbuf[PCAP_ERRBUF_SIZE];
    FILE *fp = fopen(path, "rbe");

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

static long lp_batch(struct pf_reader *r, struct ft_pkt *out, size_t cap)
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

/* --- API -------------------------------------------------------------- */

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
    if (!force_libpcap)
        rc = mm_open(r, path, errbuf);
    if (rc == 0)
        rc = lp_open(r, path, errbuf);
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
    if (r->map != NULL)
        munmap((void *)r->map, r->map_len);
    if (r->pcap != NULL)
        pcap_close(r->pcap);
    free(r->arena);
    free(r);
}

int pf_linktype(const struct pf_reader *r) { return r->linktype; }
int pf_snaplen(const struct pf_reader *r) { return r->snaplen; }
int pf_is_mmap(const struct pf_reader *r) { return r->is_mmap; }

long pf_next_batch(struct pf_reader *r, void *pkts, size_t cap)
{
    struct ft_pkt *out = pkts;
    long n;

    if (r == NULL || pkts == NULL || cap == 0)
        return -EINVAL;            /* 0 would read as end of file */
    if (r->err)
        return r->err;
    if (!r->is_mmap)
        n = lp_batch(r, out, cap);
    else if (r->byteswap)
        n = (long)mm_walk(r, out, cap, 1);
    else
        n = (long)mm_walk(r, out, cap, 0);
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
