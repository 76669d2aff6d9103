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
#define PF_HELD 16                 /* windows left behind, still pointed into */
#define PF_WINS (PF_HELD + 1)      /* mapped at most: those + the current one */
#define PF_SLOTS 64                /* batches the reader thread walks ahead, at most */
#define PF_RING_PKTS ((size_t)1 << 18) /* ... and packets in them (8 MiB of ft_pkt) */

enum { SWAP_NO = 0, SWAP_YES = 1, SWAP_MAYBE = 2 }; /* caplen/len order */

/* A mapped window; last_seq: the last batch (slot sequence number) that may
 * point into it, set when the walk leaves it for the next window. */
struct pf_win {
    void *p;
    size_t off, len;
    uint64_t last_seq;
};

/* A batch the reader thread walked, waiting to be handed out (in parts
 * when the caller asks for fewer packets). */
struct pf_slot {
    struct ft_pkt *pkts;           /* slot_cap entries; pad = 1: clipped */
    size_t n, pos;                 /* walked, handed out so far */
    size_t end_off;                /* file offset of the record after it */
    uint64_t windows;              /* mappings made when it was walked */
};

/*
 * The mmap reader is a producer (the walk: mm_produce and what it calls)
 * and a consumer (pf_mm_batch, the caller's thread). Large files run the
 * producer in a reader thread that fills a ring of nslots slots; the
 * caller copies ready slots out. Small files, and a reader that had to
 * stop its thread (the file shrank), run the producer in the caller's
 * thread, straight into the caller's array. The producer never writes
 * what the caller reads between calls (err, st, errmsg, windows): it
 * writes p_err/p_errmsg/p_truncated and per-slot values, which the
 * consumer adopts when it hands out what comes before them.
 */
struct pf_reader {
    int is_mmap;
    uint32_t linktype;             /* see pcapfile.h, "Link type" */
    int snaplen;
    int err;                       /* sticky negative errno, 0 if none */
    struct pf_stats st;
    char errmsg[PF_ERRBUF_SIZE];
    uint64_t windows;              /* mappings made, as handed out */

    /* mmap reader, producer side: the file is mapped one window at a time */
    int fd;                        /* kept open to map later windows */
    size_t file_len;               /* size at pf_open(), less if it shrank */
    size_t open_len;               /* size at pf_open() */
    int shrunk;                    /* fstat saw the file shorter than open_len */
    int test_no_fstat;             /* pf_test_skip_fstat() */
    _Atomic int bus_fault;         /* the SIGBUS handler zero-filled a page of
                                      one of our mappings (set in the handler) */
    _Atomic int bus_user;          /* ... and the fault was not in the reader
                                      thread: the caller read a cut packet */
    _Atomic int walk_tid;          /* the reader thread's tid, 0 if none */
    size_t win;                    /* window size, a page multiple */
    size_t page;
    const uint8_t *map;            /* current window ... */
    size_t map_off;                /* ... maps [map_off, map_off + map_len) */
    size_t map_len;
    size_t off;                    /* file offset of the next record header */
    size_t pf_off;                 /* prefetched up to here (file offset) */
    struct pf_win wins[PF_WINS];   /* mapped, oldest first; the last is map */
    int nwin;
    int win_full;                  /* the walk stopped: PF_WINS mapped */
    uint64_t nwindows;             /* mappings made */
    int p_err;                     /* the walk's error, not yet handed out */
    uint64_t p_truncated;          /* its truncated_records, likewise */
    char p_errmsg[PF_ERRBUF_SIZE];
    uint64_t prod_seq;             /* the batch being walked */
    _Atomic uint64_t rel_seq;      /* batches before it are dead: their
                                      windows may be unmapped */
    int byteswap;                  /* file is in the other byte order */
    int lengths;                   /* SWAP_* */
    uint32_t frac_mult;            /* 1000 (us) or 1 (ns) */

    /* the reader thread and its ring (mu guards what follows, prod_seq and
     * the slots' n/pos/end_off/windows while it runs) */
    int may_thread;                /* large file: start it at the 1st batch */
    int threaded;                  /* running (or done, not yet joined) */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv_prod;        /* the reader waits: ring full, windows */
    pthread_cond_t cv_cons;        /* the caller waits: nothing ready */
    struct pf_slot slots[PF_SLOTS];
    size_t nslots;                 /* in use: PF_RING_PKTS / slot_cap, 4..PF_SLOTS */
    size_t slot_cap;
    uint64_t cons_seq;             /* the next slot to hand out */
    size_t cons_off;               /* file offset after the last slot handed
                                      out whole */
    int done;                      /* the reader walked to the end/an error */
    int stop;                      /* pf_close(): the reader thread exits */


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
 * out[0..cap), returns the count and counts cap_bytes, wire_bytes,
 * clipped_records (pf_next_batch counts packets and batches); at 0 r->err
 * is set, or it is the end of file. pf_mm_close releases everything, the
 * reader thread included. */
int pf_mm_open(struct pf_reader *r, const char *path, char *errbuf);
size_t pf_mm_batch(struct pf_reader *r, struct ft_pkt *out, size_t cap);
void pf_mm_close(struct pf_reader *r);

/* pcapfile_libpcap.c: as above, the libpcap reader (pf_lp_open: 0 or a
 * negative errno with errbuf set). */
int pf_lp_open(struct pf_reader *r, const char *path, char *errbuf);
long pf_lp_batch(struct pf_reader *r, struct ft_pkt *out, size_t cap);
void pf_lp_close(struct pf_reader *r);

#endif
