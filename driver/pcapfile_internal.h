/*
 * pcapfile_internal.h - what the capture-file reader's three files share:
 * the reader's state and the calls between them. Not part of the API
 * (pcapfile.h is); private to the _pcapfile extension.
 *
 *   pcapfile.c          the API: open (which reader), batch, stats, close
 *   pcapfile_mmap.c     classic pcap, mapped in windows, zero copy
 *   pcapfile_libpcap.c  everything else, through libpcap, into an arena
 */
#ifndef PCAPFILE_INTERNAL_H
#define PCAPFILE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <pcap/pcap.h>

#include "ft_records.h"
#include "pcapfile.h"

#define PF_LT_RESERVED1 0x03ff0000u /* libpcap's LT_RESERVED1: must be 0 */
#define PF_HELD 16                 /* windows left behind within one batch */

enum { SWAP_NO = 0, SWAP_YES = 1, SWAP_MAYBE = 2 }; /* caplen/len order */

struct pf_reader {
    int is_mmap;
    uint32_t linktype;             /* see pcapfile.h, "Link type" */
    int snaplen;
    int err;                       /* sticky negative errno, 0 if none */
    struct pf_stats st;
    char errmsg[PF_ERRBUF_SIZE];

    /* mmap reader: the file is mapped one window at a time */
    int fd;                        /* kept open to map later windows */
    size_t file_len;               /* size at pf_open(), less if it shrank */
    size_t open_len;               /* size at pf_open() */
    int shrunk;                    /* fstat saw the file shorter than open_len */
    int test_no_fstat;             /* pf_test_skip_fstat() */
    _Atomic int bus_fault;         /* the SIGBUS handler zero-filled a page of
                                      one of our mappings (set in the handler) */
    size_t win;                    /* window size, a page multiple */
    size_t page;
    const uint8_t *map;            /* current window ... */
    size_t map_off;                /* ... maps [map_off, map_off + map_len) */
    size_t map_len;
    size_t off;                    /* file offset of the next record header */
    size_t pf_off;                 /* prefetched up to here (file offset) */
    struct { void *p; size_t len; } held[PF_HELD]; /* left this batch, still
                                      pointed into: unmapped on the next call */
    int nheld;
    uint64_t windows;              /* mappings made */
    /* the window mapped ahead, and the helper that populates it */
    void *next_p;
    size_t next_off, next_len;
    int ahead;                     /* helper thread running */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void *job_p;                   /* posted, not started (under mu) */
    size_t job_len;
    void *busy_p;                  /* being populated (under mu) */
    int stop;
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

static inline void fail(struct pf_reader *r, int err)
{
    r->err = err;
    r->st.truncated_records++;
}

/* pcapfile_mmap.c. pf_mm_open: 1 when it mapped a classic pcap file, 0 when
 * the file is not one (use libpcap), or a negative errno. pf_mm_batch fills
 * out[0..cap) and returns the count. pf_mm_release_held unmaps the windows
 * the previous batch pointed into; pf_mm_close releases the rest. */
int pf_mm_open(struct pf_reader *r, const char *path, char *errbuf);
size_t pf_mm_batch(struct pf_reader *r, struct ft_pkt *out, size_t cap);
void pf_mm_release_held(struct pf_reader *r);
void pf_mm_close(struct pf_reader *r);

/* pcapfile_libpcap.c: as above, the libpcap reader (pf_lp_open: 0 or a
 * negative errno with errbuf set). */
int pf_lp_open(struct pf_reader *r, const char *path, char *errbuf);
long pf_lp_batch(struct pf_reader *r, struct ft_pkt *out, size_t cap);
void pf_lp_close(struct pf_reader *r);

#endif
