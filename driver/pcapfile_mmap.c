/*
 * pcapfile_mmap.c - the mmap reader of classic pcap files (see pcapfile.h,
 * "Two readers behind one API"): the file is mapped read-only in windows,
 * records are walked in place (ft_pkt.data points into the mapping) and
 * every record header is validated against the rest of the file before use.
 *
 * Producer and consumer. The walk streams the whole file through the cache
 * (on a 5.6 GB capture its header loads and the munmap of old windows were
 * ~30% of the caller's thread, which also runs the flow table). A file
 * larger than one window of at least PF_THREAD_MIN is therefore walked by
 * a reader thread, started at the first pf_next_batch() (the caller's cap
 * sizes its slots; the test hook pf_test_skip_fstat() comes before it),
 * into a ring of batch slots (up to PF_RING_PKTS packets): the thread
 * maps, walks, validates and unmaps; the caller copies a ready slot (32
 * bytes a packet) and blocks on a condition variable when none is ready
 * (never spins: 2 vCPUs are shared). The ring bounds how far ahead the thread goes; windows are
 * unmapped once no handed-out or ready batch points into them (each
 * window's last_seq against rel_seq, the oldest batch the caller may still
 * read), at most PF_WINS mapped at once. Errors and their counters travel
 * behind the slots (p_err, p_truncated, p_errmsg): the caller adopts them
 * once every packet before them was handed out. Small files walk in the
 * caller's thread, straight into its array (the same producer code).
 *
 * A file that shrinks while it is read (truncate(1), a rotating writer)
 * must not kill the process: reading a mapped page past the new end of
 * file raises SIGBUS, in the walk below or later in the flow engine, which
 * reads the packet bytes a batch points to. Two defences, neither on the
 * per-packet path:
 *   - fstat() before each batch and before each new window: a file seen
 *     shorter is walked up to its new end only, then -ESTALE;
 *   - for a cut between that fstat() and the reads, a SIGBUS handler: a
 *     fault (BUS_ADRERR) inside one of OUR mappings (a registry of them,
 *     filled on mmap, emptied before munmap) gets a zero page mapped over
 *     the faulting page, the reader's bus_fault flag set (and bus_user when
 *     the fault was not in the reader thread), and the read goes on; the
 *     walk stops at the record it was reading, and the next
 *     pf_next_batch() returns -ESTALE. Any other SIGBUS goes to the handler
 *     that was there before (default: the process dies as it would have).
 * With a reader thread, ready slots were walked before the cut: the
 * caller also fstat()s before each batch, and when the file shrank (or it
 * read a cut page itself) it stops the thread, drops what was not handed
 * out and walks on from there in its own thread, exactly as a small file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "pcapfile_internal.h"

#define PF_FILE_HDR 24
#define PF_REC_HDR 16
#define PF_WINDOW_DEFAULT ((size_t)64 << 20)
#define PF_WINDOW_ENV "FLOWPROBE_PCAP_WINDOW"
/* A file larger than one window of at least this size gets a reader thread
 * (tests use smaller windows to run the caller-thread walk on many
 * windows). */
#define PF_THREAD_MIN ((size_t)4 << 20)
/* A slot holds the first call's cap, within these bounds: a small cap gets
 * its packets from a slot in parts, not a wake-up of the thread each. */
#define PF_SLOT_MIN ((size_t)1 << 10)
#define PF_SLOT_MAX ((size_t)1 << 16)
#ifndef PF_AHEAD
#define PF_AHEAD 4096              /* bytes prefetched ahead of the walk */
#endif

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

/* ---- SIGBUS: the registry of our mappings and the handler ------------- */

#define PF_MAPS_MAX 256            /* PF_WINS (17) per open reader */

static struct pf_map_slot {
    struct pf_reader *_Atomic owner;   /* NULL: free */
    _Atomic uintptr_t start;
    _Atomic size_t len;            /* 0 while the slot is being (un)filled */
} pf_maps[PF_MAPS_MAX];

static struct sigaction pf_old_bus;    /* the handler before ours */
static size_t pf_bus_page = 4096;
static pthread_once_t pf_bus_once = PTHREAD_ONCE_INIT;

static void mm_on_sigbus(int sig, siginfo_t *si, void *ctx)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    int i;

    if (si->si_code == BUS_ADRERR) {
        for (i = 0; i < PF_MAPS_MAX; i++) {
            size_t len = atomic_load_explicit(&pf_maps[i].len, memory_order_acquire);
            uintptr_t s = atomic_load_explicit(&pf_maps[i].start, memory_order_relaxed);
            struct pf_reader *r = atomic_load_explicit(&pf_maps[i].owner,
                                                       memory_order_relaxed);
            if (len == 0 || r == NULL || a - s >= len)
                continue;
            /* a page past the end of our file: read zeros from here on */
            if (mmap((void *)(a & ~(uintptr_t)(pf_bus_page - 1)), pf_bus_page,
                     PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                     -1, 0) == MAP_FAILED)
                break;
            atomic_store_explicit(&r->bus_fault, 1, memory_order_relaxed);
            /* gettid() is async-signal-safe; the caller's read of a cut
             * packet means the file ends inside what it was handed */
            if (gettid() != atomic_load_explicit(&r->walk_tid,
                                                 memory_order_relaxed))
                atomic_store_explicit(&r->bus_user, 1, memory_order_relaxed);
            return;
        }
    }
    /* not ours: what would have happened without us */
    if (pf_old_bus.sa_flags & SA_SIGINFO) {
        pf_old_bus.sa_sigaction(sig, si, ctx);
    } else if (pf_old_bus.sa_handler == SIG_DFL ||
               pf_old_bus.sa_handler == SIG_IGN) {
        signal(SIGBUS, SIG_DFL);   /* the access faults again and kills */
    } else {
        pf_old_bus.sa_handler(sig);
    }
}

static void mm_bus_install(void)
{
    struct sigaction sa;
    long pg = sysconf(_SC_PAGESIZE);

    if (pg > 0)
        pf_bus_page = (size_t)pg;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = mm_on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    (void)sigaction(SIGBUS, &sa, &pf_old_bus);
}

/* Best effort: a mapping not registered (256 slots full) is only
 * unprotected, as every mapping was before. */
static void mm_track(struct pf_reader *r, const void *p, size_t len)
{
    int i;

    for (i = 0; i < PF_MAPS_MAX; i++) {
        struct pf_reader *none = NULL;
        if (atomic_compare_exchange_strong(&pf_maps[i].owner, &none, r)) {
            atomic_store_explicit(&pf_maps[i].start, (uintptr_t)p,
                                  memory_order_relaxed);
            atomic_store_explicit(&pf_maps[i].len, len, memory_order_release);
            return;
        }
    }
}

static void mm_untrack(struct pf_reader *r, const void *p)
{
    int i;

    for (i = 0; i < PF_MAPS_MAX; i++) {
        if (atomic_load(&pf_maps[i].owner) == r &&
            atomic_load(&pf_maps[i].start) == (uintptr_t)p) {
            atomic_store_explicit(&pf_maps[i].len, 0, memory_order_release);
            atomic_store(&pf_maps[i].start, 0);
            atomic_store(&pf_maps[i].owner, NULL);
            return;
        }
    }
}

/* mmap a window of our file, registered for the SIGBUS handler. */
static void *mm_mmap(struct pf_reader *r, size_t len, size_t off, int flags)
{
    void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE | flags, r->fd, (off_t)off);

    if (m != MAP_FAILED)
        mm_track(r, m, len);
    return m;
}

/* ---- a file that shrinks ---------------------------------------------- */

/* fstat(): a file now shorter than the walk's end is walked to its new
 * end only. Cheap (once per batch and per window). */
static void mm_check_size(struct pf_reader *r)
{
    struct stat sb;

    if (__builtin_expect(r->test_no_fstat, 0))
        return;
    if (fstat(r->fd, &sb) == 0 && (size_t)sb.st_size < r->file_len) {
        r->file_len = (size_t)sb.st_size;
        r->shrunk = 1;
    }
}

/* Reading stops here: the file shrank (-ESTALE, counted once). */
static void mm_shrunk(struct pf_reader *r)
{
    struct stat sb;

    if (r->p_err == -ESTALE)
        return;
    if (fstat(r->fd, &sb) == 0 && (size_t)sb.st_size < r->file_len)
        r->file_len = (size_t)sb.st_size;
    r->shrunk = 1;
    if (r->p_err != -EBADMSG)      /* a cut record is counted already */
        r->p_truncated++;
    snprintf(r->p_errmsg, PF_ERRBUF_SIZE, "the file shrank from %zu to %zu "
             "bytes while being read: reading stops at offset %zu",
             r->open_len, r->file_len, r->off);
    r->p_err = -ESTALE;
}

/* A corrupt or cut record: reading stops here (the walk's fail()). */
static void mm_fail(struct pf_reader *r, int err)
{
    r->p_err = err;
    r->p_truncated++;
}

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

    if (r->map_len < PF_FILE_HDR || r->file_len < PF_FILE_HDR)
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
    lt = rd32(h + 20, r->byteswap);
    if ((lt & PF_LT_RESERVED1) == 0)
        lt &= 0xffffu;             /* drop a well-formed FCS annotation */
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
    r->linktype = lt;
    r->snaplen = (snap == 0 || snap > PF_MAX_CAPLEN) ? PF_MAX_CAPLEN : (int)snap;
    r->off = PF_FILE_HDR;
    return 1;
}

/* Unmap the windows no batch the caller may still read points into: those
 * left (last_seq) before rel_seq. Never the current one. Producer only. */
static void mm_release(struct pf_reader *r)
{
    uint64_t rel = atomic_load_explicit(&r->rel_seq, memory_order_acquire);
    int i = 0, k;

    while (i < r->nwin - 1 && r->wins[i].last_seq < rel) {
        mm_untrack(r, r->wins[i].p);
        munmap(r->wins[i].p, r->wins[i].len);
        i++;
    }
    if (i == 0)
        return;
    for (k = 0; k + i < r->nwin; k++)
        r->wins[k] = r->wins[k + i];
    r->nwin -= i;
}

static void mm_unmap_all(struct pf_reader *r)
{
    while (r->nwin > 0) {
        r->nwin--;
        mm_untrack(r, r->wins[r->nwin].p);
        munmap(r->wins[r->nwin].p, r->wins[r->nwin].len);
    }
    r->map = NULL;
    r->map_off = r->map_len = 0;
}

/* Map [page_floor(off), ...) covering at least `need` bytes from off (a
 * whole record, or its header when its length is still unknown) and at
 * least one window, clipped to the file. The previous window stays mapped until no batch the
 * caller may read points into it (mm_release).
 * 1: mapped; 0: PF_WINS windows mapped and all still pointed into, end the
 * batch here (the next one goes on); -1: error set. */
static int mm_slide(struct pf_reader *r, size_t off, size_t need)
{
    size_t start = off & ~(r->page - 1);
    size_t len = (off - start + need + r->page - 1) & ~(r->page - 1);
    void *m;

    if (r->nwin == PF_WINS) {
        mm_release(r);
        if (r->nwin == PF_WINS) {
            r->win_full = 1;
            return 0;
        }
    }
    mm_check_size(r);              /* never map past a new end of file */
    if (off + need > r->file_len) {
        mm_shrunk(r);
        return -1;
    }
    if (len < r->win)
        len = r->win;
    if (len > r->file_len - start)
        len = r->file_len - start;
    /* The reader thread leaves the page tables to its own faults (the
     * kernel maps 64 KiB around each): on the 5.6 GB capture MAP_POPULATE
     * there cost 0.4 s more system time and was the pipeline's bottleneck
     * (the caller waited 0.6 s in read_into vs 0.2 s). A populate helper
     * would only move that work to a third thread on two shared vCPUs.
     * The caller's own walk (small files and windows) keeps MAP_POPULATE. */
    m = mm_mmap(r, len, start, r->threaded ? 0 : MAP_POPULATE);
    if (m == MAP_FAILED) {
        int e = errno;
        snprintf(r->p_errmsg, PF_ERRBUF_SIZE, "mmap of %zu bytes at offset "
                 "%zu: %s", len, start, strerror(e));
        r->p_err = -e;
        return -1;
    }
    (void)madvise(m, len, MADV_SEQUENTIAL);
    if (start + len < r->file_len)   /* read the next window ahead (cold file) */
        (void)posix_fadvise(r->fd, (off_t)(start + len), (off_t)r->win,
                            POSIX_FADV_WILLNEED);
    if (r->nwin > 0)               /* the batch being walked may point into it */
        r->wins[r->nwin - 1].last_seq = r->prod_seq;
    r->wins[r->nwin].p = m;
    r->wins[r->nwin].off = start;
    r->wins[r->nwin].len = len;
    r->wins[r->nwin].last_seq = UINT64_MAX;
    r->nwin++;
    r->map = m;
    r->map_off = start;
    r->map_len = len;
    r->pf_off = off;
    r->nwindows++;
    return 1;
}

/* Walks records by file offset; `off` is always inside the file, the
 * window [moff, mend) is re-read after every mm_slide(). Lines ahead of
 * the walk are prefetched: each record's length comes from its header, so
 * without it the walk is a chain of dependent cache misses. */
static inline __attribute__((always_inline)) size_t
mm_walk(struct pf_reader *r, struct ft_pkt *out, size_t cap, const int swap)
{
    const size_t end = r->file_len;
    const uint32_t snap = (uint32_t)r->snaplen;
    const uint64_t mult = r->frac_mult;
    const uint8_t *map = r->map;
    size_t moff = r->map_off, mend = r->map_off + r->map_len;
    size_t off = r->off, pf = r->pf_off, n = 0;

    while (n < cap) {
        const uint8_t *h;
        size_t left = end - off, lim;
        uint32_t sec, frac, caplen, len, t;

        if (left == 0)
            break;
        if (left < PF_REC_HDR) {
            snprintf(r->p_errmsg, PF_ERRBUF_SIZE, "truncated record header "
                     "at offset %zu: only %zu bytes left", off, left);
            mm_fail(r, -EBADMSG);
            break;
        }
        if (__builtin_expect(off + PF_REC_HDR > mend, 0)) {
            if (mm_slide(r, off, PF_REC_HDR) <= 0)
                break;
            map = r->map; moff = r->map_off; mend = moff + r->map_len;
            pf = off;
        }
        h = map + (off - moff);
        sec = rd32(h, swap);
        frac = rd32(h + 4, swap);
        caplen = rd32(h + 8, swap);
        len = rd32(h + 12, swap);
        if (__builtin_expect(atomic_load_explicit(&r->bus_fault,
                                                  memory_order_relaxed), 0))
            break;                 /* the header was past a new end of file */
        if (__builtin_expect(r->lengths != SWAP_NO, 0) &&
            (r->lengths == SWAP_YES || caplen > len)) {
            t = caplen; caplen = len; len = t;
        }
        if (caplen > PF_MAX_CAPLEN) {
            snprintf(r->p_errmsg, PF_ERRBUF_SIZE, "corrupt record at offset "
                     "%zu: caplen %u above the maximum of %u", off, caplen,
                     (unsigned)PF_MAX_CAPLEN);
            mm_fail(r, -EBADMSG);
            break;
        }
        if (caplen > left - PF_REC_HDR) {
            snprintf(r->p_errmsg, PF_ERRBUF_SIZE, "truncated record at offset "
                     "%zu: caplen %u, only %zu bytes left", off, caplen,
                     left - PF_REC_HDR);
            mm_fail(r, -EBADMSG);
            break;
        }
        if (__builtin_expect(off + PF_REC_HDR + caplen > mend, 0)) {
            if (mm_slide(r, off, PF_REC_HDR + (size_t)caplen) <= 0)
                break;
            map = r->map; moff = r->map_off; mend = moff + r->map_len;
            pf = off;
            h = map + (off - moff);
        }
        lim = off + PF_AHEAD < mend ? off + PF_AHEAD : mend;
        for (; pf < lim; pf += 64)
            __builtin_prefetch(map + (pf - moff));
        out[n].data = h + PF_REC_HDR;
        /* pad marks a clipped record until pf_mm_batch() counts it: the
         * caller's counters follow what is handed out, not what is walked */
        if (__builtin_expect(caplen > snap, 0)) {
            out[n].caplen = snap;
            out[n].pad = 1;
        } else {
            out[n].caplen = caplen;
            out[n].pad = 0;
        }
        out[n].wirelen = len;
        out[n].ts_ns = (uint64_t)sec * 1000000000u + (uint64_t)frac * mult;
        out[n].ifindex = 0;
        out[n].vlan_tci = 0;
        out[n].vlan_valid = 0;
        off += PF_REC_HDR + (size_t)caplen;
        n++;
    }
    r->off = off;
    r->pf_off = pf;
    return n;
}

/* The window size: FLOWPROBE_PCAP_WINDOW (bytes, optional k/m/g suffix)
 * or 64 MiB, rounded up to a page. Tests set a small one. */
static size_t mm_window(size_t page)
{
    const char *env = getenv(PF_WINDOW_ENV);
    size_t w = PF_WINDOW_DEFAULT;

    if (env != NULL && *env != '\0') {
        char *endp;
        unsigned long long v = strtoull(env, &endp, 10);
        switch (*endp) {
        case 'k': case 'K': v <<= 10; break;
        case 'm': case 'M': v <<= 20; break;
        case 'g': case 'G': v <<= 30; break;
        default: break;
        }
        if (v > 0)
            w = (size_t)v;
    }
    return (w + page - 1) & ~(page - 1);
}

/* 1: mapped a classic pcap file; 0: not one (use libpcap); <0: errno. */
int pf_mm_open(struct pf_reader *r, const char *path, char *errbuf)
{
    struct stat sb;
    void *m;
    long pg = sysconf(_SC_PAGESIZE);
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
    r->page = pg > 0 ? (size_t)pg : 4096;
    r->win = mm_window(r->page);
    r->file_len = r->open_len = (size_t)sb.st_size;
    r->map_len = r->file_len < r->win ? r->file_len : r->win;
    pthread_once(&pf_bus_once, mm_bus_install);
    r->fd = fd;
    m = mm_mmap(r, r->map_len, 0, MAP_POPULATE);
    if (m == MAP_FAILED) {
        close(fd);
        r->fd = -1;
        r->map_len = 0;
        return 0;
    }
    r->map = m;
    r->map_off = 0;
    if (!mm_header(r)) {
        mm_untrack(r, m);
        munmap(m, r->map_len);
        close(fd);
        r->fd = -1;
        r->map = NULL;
        r->map_len = 0;
        return 0;
    }
    (void)madvise(m, r->map_len, MADV_SEQUENTIAL);
    if (r->map_len < r->file_len)
        (void)posix_fadvise(fd, (off_t)r->map_len, (off_t)r->win,
                            POSIX_FADV_WILLNEED);
    r->wins[0].p = m;
    r->wins[0].off = 0;
    r->wins[0].len = r->map_len;
    r->wins[0].last_seq = UINT64_MAX;
    r->nwin = 1;
    r->pf_off = r->off;
    r->nwindows = r->windows = 1;
    r->is_mmap = 1;
    r->may_thread = r->win >= PF_THREAD_MIN && r->map_len < r->file_len;
    return 1;
}

/* ---- the producer: one batch --------------------------------------------- */

/* Walk up to cap records into out (a slot, or the caller's array) and set
 * p_err when reading stops. */
static size_t mm_produce(struct pf_reader *r, struct ft_pkt *out, size_t cap)
{
    size_t n;

    /* A SIGBUS since the last batch (in the flow engine, reading it) means
     * the file ends before r->off: nothing readable is left. (Behind a
     * reader thread the caller then redoes this from what it was handed:
     * mm_go_sync.) */
    mm_check_size(r);
    if (atomic_load_explicit(&r->bus_fault, memory_order_relaxed) ||
        (r->shrunk && r->off > r->file_len)) {
        mm_shrunk(r);
        return 0;
    }
    r->win_full = 0;
    /* two copies of the walk, the byte order a constant in each */
    n = r->byteswap ? mm_walk(r, out, cap, 1) : mm_walk(r, out, cap, 0);
    if (__builtin_expect(r->shrunk || atomic_load_explicit(
            &r->bus_fault, memory_order_relaxed), 0)) {
        if (r->p_err == 0 || r->p_err == -EBADMSG) {
            if (atomic_load_explicit(&r->bus_fault, memory_order_relaxed) ||
                r->p_err == -EBADMSG || r->off >= r->file_len)
                mm_shrunk(r);
        }
    }
    return n;
}

/* The walk's error, now that everything before it was handed out. */
static void mm_adopt_err(struct pf_reader *r)
{
    if (r->p_err == 0 || r->err != 0)
        return;
    r->err = r->p_err;
    r->st.truncated_records += r->p_truncated;
    memcpy(r->errmsg, r->p_errmsg, PF_ERRBUF_SIZE);
}

/* The caller's thread walks: into its own array, no copy. */
static size_t mm_sync_batch(struct pf_reader *r, struct ft_pkt *out, size_t cap)
{
    size_t n;

    /* the previous batch is dead: every window but the current one goes */
    atomic_store_explicit(&r->rel_seq, r->prod_seq, memory_order_release);
    mm_release(r);
    /* an error is adopted (and counted) when it is returned, as behind the
     * reader thread's slots: never in the call that returns packets */
    if (r->p_err != 0) {
        mm_adopt_err(r);
        return 0;
    }
    n = mm_produce(r, out, cap);
    r->prod_seq++;
    r->windows = r->nwindows;
    if (n == 0)
        mm_adopt_err(r);
    return n;
}

/* ---- the reader thread ------------------------------------------------- */

static void *mm_reader_main(void *arg)
{
    struct pf_reader *r = arg;

    atomic_store(&r->walk_tid, (int)gettid());
    pthread_mutex_lock(&r->mu);
    for (;;) {
        struct pf_slot *sl;
        uint64_t seen;
        size_t n;

        while (!r->stop && r->prod_seq - r->cons_seq >= r->nslots)
            pthread_cond_wait(&r->cv_prod, &r->mu);
        if (r->stop)
            break;
        sl = &r->slots[r->prod_seq % r->nslots];
        seen = atomic_load(&r->rel_seq);
        pthread_mutex_unlock(&r->mu);

        /* no lock: the caller touches neither this slot (not ready) nor
         * the producer's fields while we run */
        mm_release(r);
        n = mm_produce(r, sl->pkts, r->slot_cap);

        pthread_mutex_lock(&r->mu);
        if (n > 0) {
            sl->n = n;
            sl->pos = 0;
            sl->end_off = r->off;
            sl->windows = r->nwindows;
            r->prod_seq++;
            pthread_cond_signal(&r->cv_cons);
        }
        if (r->p_err != 0 || (n < r->slot_cap && !r->win_full)) {
            r->done = 1;           /* end of file or an error: the caller
                                      adopts it after the last slot */
            pthread_cond_signal(&r->cv_cons);
            break;
        }
        /* PF_WINS windows, every one pointed into: wait for the caller
         * to move on (it always can: the ring holds what points into them) */
        while (n == 0 && r->win_full && !r->stop && atomic_load(&r->rel_seq) == seen)
            pthread_cond_wait(&r->cv_prod, &r->mu);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void mm_slots_free(struct pf_reader *r)
{
    size_t i;

    for (i = 0; i < PF_SLOTS; i++) {
        free(r->slots[i].pkts);
        r->slots[i].pkts = NULL;
    }
}

static void mm_thread_start(struct pf_reader *r, size_t cap)
{
    sigset_t all, old;
    size_t i;
    int rc;

    r->may_thread = 0;
    r->slot_cap = cap < PF_SLOT_MIN ? PF_SLOT_MIN :
                  cap > PF_SLOT_MAX ? PF_SLOT_MAX : cap;
    /* Deep enough to ride out either side's stalls (a huge page zero-filled
     * in the flow table, a window unmapped here): on the 5.6 GB capture
     * each side waited 0.3-0.4 s with 4 slots of 4096 packets, 0.03-0.13 s
     * with 16-256, and the replay's C part took 2.30 s against 1.80-1.97
     * (median of 6-7 interleaved runs). */
    r->nslots = PF_RING_PKTS / r->slot_cap;
    r->nslots = r->nslots < 4 ? 4 : r->nslots > PF_SLOTS ? PF_SLOTS : r->nslots;
    for (i = 0; i < r->nslots; i++) {
        r->slots[i].pkts = malloc(r->slot_cap * sizeof(struct ft_pkt));
        if (r->slots[i].pkts == NULL)
            goto fail_slots;
    }
    if (pthread_mutex_init(&r->mu, NULL) != 0)
        goto fail_slots;
    if (pthread_cond_init(&r->cv_prod, NULL) != 0)
        goto fail_mu;
    if (pthread_cond_init(&r->cv_cons, NULL) != 0)
        goto fail_cv;
    r->cons_seq = r->prod_seq;
    r->cons_off = r->off;
    atomic_store(&r->rel_seq, r->prod_seq);
    /* Asynchronous signals stay with the caller's threads (Python's handlers
     * run there); the faults (SIGBUS above all) are the reader's own. */
    sigfillset(&all);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    r->threaded = 1;               /* before the thread reads it (mm_slide) */
    rc = pthread_create(&r->th, NULL, mm_reader_main, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0)
        return;
    r->threaded = 0;
    pthread_cond_destroy(&r->cv_cons);
fail_cv:
    pthread_cond_destroy(&r->cv_prod);
fail_mu:
    pthread_mutex_destroy(&r->mu);
fail_slots:
    mm_slots_free(r);
}

/* Stop (pf_close, a shrink) or reap (done) the reader thread; the producer
 * fields are the caller's alone afterwards. The slots stay. */
static void mm_thread_stop(struct pf_reader *r)
{
    if (!r->threaded)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_signal(&r->cv_prod);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->th, NULL);
    atomic_store(&r->walk_tid, 0);
    pthread_cond_destroy(&r->cv_cons);
    pthread_cond_destroy(&r->cv_prod);
    pthread_mutex_destroy(&r->mu);
    r->threaded = 0;
}

/* The file shrank, or the caller read a cut page: the ready slots were
 * walked before that was known. Stop the thread, drop all that was not
 * handed out and go on in the caller's thread from the first record not
 * handed out, as a small file would (same records, same error, same text). */
static void mm_go_sync(struct pf_reader *r)
{
    size_t resume = r->cons_off;
    int i;

    mm_thread_stop(r);             /* joined: no lock needed below */
    if (r->prod_seq != r->cons_seq) {
        struct pf_slot *sl = &r->slots[r->cons_seq % r->nslots];
        if (sl->pos > 0) {         /* handed out in part: resume inside it */
            const uint8_t *d = sl->pkts[sl->pos].data;
            for (i = 0; i < r->nwin; i++) {
                const uint8_t *p = r->wins[i].p;
                if (d >= p && d < p + r->wins[i].len) {
                    resume = r->wins[i].off + (size_t)(d - p) - PF_REC_HDR;
                    break;
                }
            }
        }
    }
    mm_slots_free(r);
    r->prod_seq = r->cons_seq;
    mm_unmap_all(r);               /* the caller's last batch is dead too */
    r->off = r->pf_off = resume;
    r->p_err = 0;
    r->p_truncated = 0;
    r->p_errmsg[0] = '\0';
    /* a fault in the walk was past what was handed out: forget it (the
     * pages are mapped anew); one in the caller's reads ends the file */
    if (!atomic_load(&r->bus_user))
        atomic_store(&r->bus_fault, 0);
    r->done = 0;
}

/* ---- the consumer: pf_next_batch() --------------------------------------- */

/* Hand out (part of) the next ready slot; 0 when the reader is done and
 * everything before its end or error was handed out. */
static size_t mm_take(struct pf_reader *r, struct ft_pkt *out, size_t cap)
{
    struct pf_slot *sl;
    size_t k;

    pthread_mutex_lock(&r->mu);
    /* the previous batch is dead: the reader may unmap what only it and
     * earlier ones pointed into (a slot handed out in part still counts) */
    atomic_store_explicit(&r->rel_seq, r->cons_seq, memory_order_release);
    pthread_cond_signal(&r->cv_prod);
    while (r->prod_seq == r->cons_seq && !r->done)
        pthread_cond_wait(&r->cv_cons, &r->mu);
    if (r->prod_seq == r->cons_seq) {
        pthread_mutex_unlock(&r->mu);
        mm_thread_stop(r);         /* it has exited: reap it */
        mm_slots_free(r);
        mm_release(r);             /* only the current window stays */
        r->windows = r->nwindows;
        mm_adopt_err(r);
        return 0;
    }
    sl = &r->slots[r->cons_seq % r->nslots];
    k = sl->n - sl->pos;
    if (k > cap)
        k = cap;
    memcpy(out, sl->pkts + sl->pos, k * sizeof(*out));
    sl->pos += k;
    r->windows = sl->windows;
    if (sl->pos == sl->n) {
        r->cons_off = sl->end_off;
        r->cons_seq++;
        pthread_cond_signal(&r->cv_prod);
    }
    pthread_mutex_unlock(&r->mu);
    return k;
}

size_t pf_mm_batch(struct pf_reader *r, struct ft_pkt *out, size_t cap)
{
    uint64_t capb = 0, wireb = 0, clipped = 0;
    size_t n, i;

    if (r->may_thread)
        mm_thread_start(r, cap);
    if (r->threaded) {
        struct stat sb;

        if (atomic_load_explicit(&r->bus_user, memory_order_relaxed) ||
            (!r->test_no_fstat && fstat(r->fd, &sb) == 0 &&
             (size_t)sb.st_size < r->open_len))
            mm_go_sync(r);
    }
    n = r->threaded ? mm_take(r, out, cap) : mm_sync_batch(r, out, cap);
    for (i = 0; i < n; i++) {
        capb += out[i].caplen;
        wireb += out[i].wirelen;
        clipped += out[i].pad;
        out[i].pad = 0;
    }
    r->st.cap_bytes += capb;
    r->st.wire_bytes += wireb;
    r->st.clipped_records += clipped;
    return n;
}

void pf_test_skip_fstat(struct pf_reader *r)
{
    r->test_no_fstat = 1;
}

int pf_test_reader_thread(const struct pf_reader *r)
{
    return r->threaded;
}

void pf_mm_close(struct pf_reader *r)
{
    mm_thread_stop(r);
    mm_slots_free(r);
    mm_unmap_all(r);
    if (r->fd >= 0)
        close(r->fd);
}
