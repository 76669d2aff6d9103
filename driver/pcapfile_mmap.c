/*
 * pcapfile_mmap.c - the mmap reader of classic pcap files (see pcapfile.h,
 * "Two readers behind one API"): the file is mapped read-only in windows,
 * the next one mapped ahead and populated by a helper thread, records are
 * walked in place (ft_pkt.data points into the mapping) and every record
 * header is validated against the rest of the file before use.
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
 *     the faulting page, the reader's bus_fault flag set, and the read
 *     goes on; the walk stops at the record it was reading, and the next
 *     pf_next_batch() returns -ESTALE. Any other SIGBUS goes to the handler
 *     that was there before (default: the process dies as it would have).
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
#include <unistd.h>

#include "pcapfile_internal.h"

#define PF_FILE_HDR 24
#define PF_REC_HDR 16
#define PF_WINDOW_DEFAULT ((size_t)64 << 20)
#define PF_WINDOW_ENV "FLOWPROBE_PCAP_WINDOW"
/* The next window is mapped ahead and its page tables filled by a helper
 * thread (mm_fill) while this one is walked; it starts this far
 * before the current window's end so that a record straddling that end
 * (at most 16 + 262144 bytes) lies inside it. Windows under PF_AHEAD_MIN
 * are mapped synchronously only. */
#define PF_OVERLAP ((size_t)PF_REC_HDR + PF_MAX_CAPLEN)
#define PF_AHEAD_MIN ((size_t)4 << 20)
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
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

#define PF_MAPS_MAX 256            /* 18 per open reader (window, held, ahead) */

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

    if (r->err == -ESTALE)
        return;
    if (fstat(r->fd, &sb) == 0 && (size_t)sb.st_size < r->file_len)
        r->file_len = (size_t)sb.st_size;
    r->shrunk = 1;
    if (r->err != -EBADMSG)        /* a cut record is counted already */
        r->st.truncated_records++;
    snprintf(r->errmsg, PF_ERRBUF_SIZE, "the file shrank from %zu to %zu "
             "bytes while being read: reading stops at offset %zu",
             r->open_len, r->file_len, r->off);
    r->err = -ESTALE;
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

/* Fill the page tables of a window ahead of the walk (helper thread), best
 * effort. MADV_POPULATE_READ, not reads: populate reports a page past a new
 * end of file as an error, where a read (one per 64 KiB fault-around block
 * measured ~8% less CPU in the reader alone) raised SIGBUS in this thread,
 * ahead of the walk, and the reader then stopped before records that were
 * still whole (test_pcapfile_shrink, under load). */
static void mm_fill(void *p, size_t len)
{
    (void)madvise(p, len, MADV_POPULATE_READ);
}

static void *mm_ahead_main(void *arg)
{
    struct pf_reader *r = arg;

    pthread_mutex_lock(&r->mu);
    for (;;) {
        void *p;
        size_t len;

        while (!r->stop && r->job_p == NULL)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop)
            break;
        p = r->busy_p = r->job_p;
        len = r->job_len;
        r->job_p = NULL;
        pthread_mutex_unlock(&r->mu);
        mm_fill(p, len);
        pthread_mutex_lock(&r->mu);
        r->busy_p = NULL;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* munmap, once the helper is done with (or will never touch) p. */
static void mm_unmap(struct pf_reader *r, void *p, size_t len)
{
    if (r->ahead) {
        pthread_mutex_lock(&r->mu);
        if (r->job_p == p)
            r->job_p = NULL;
        while (r->busy_p == p)
            pthread_cond_wait(&r->cv, &r->mu);
        pthread_mutex_unlock(&r->mu);
    }
    mm_untrack(r, p);
    munmap(p, len);
}

/* Map the window that follows the current one (without populating it)
 * and hand it to the helper. Best effort: on failure there is none. */
static void mm_map_ahead(struct pf_reader *r)
{
    size_t cur_end = r->map_off + r->map_len, start, len;
    void *m;

    if (!r->ahead || r->next_p != NULL || cur_end >= r->file_len)
        return;
    start = (cur_end - PF_OVERLAP) & ~(r->page - 1);
    len = r->win;
    if (len > r->file_len - start)
        len = r->file_len - start;
    m = mm_mmap(r, len, start, 0);
    if (m == MAP_FAILED)
        return;
    (void)madvise(m, len, MADV_SEQUENTIAL);
    r->next_p = m;
    r->next_off = start;
    r->next_len = len;
    pthread_mutex_lock(&r->mu);
    r->job_p = m;
    r->job_len = len;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void mm_ahead_start(struct pf_reader *r)
{
    if (r->win < PF_AHEAD_MIN || r->map_len >= r->file_len)
        return;
    if (pthread_mutex_init(&r->mu, NULL) != 0)
        return;
    if (pthread_cond_init(&r->cv, NULL) != 0) {
        pthread_mutex_destroy(&r->mu);
        return;
    }
    if (pthread_create(&r->th, NULL, mm_ahead_main, r) != 0) {
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        return;
    }
    r->ahead = 1;
    mm_map_ahead(r);
}

static void mm_ahead_stop(struct pf_reader *r)
{
    if (!r->ahead)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->th, NULL);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    r->ahead = 0;                  /* mm_unmap() needs no lock from here */
}

void pf_mm_release_held(struct pf_reader *r)
{
    while (r->nheld > 0) {
        r->nheld--;
        mm_unmap(r, r->held[r->nheld].p, r->held[r->nheld].len);
    }
}

/* Map [page_floor(off), ...) covering at least `need` bytes from off (a
 * whole record, or its header when its length is still unknown) and at
 * least one window, clipped to the file. The previous window stays mapped
 * until the next pf_next_batch(): this batch may point into it.
 * 1: mapped; 0: no slot to hold the old window, end the batch here (the
 * next call goes on); -1: error set. */
static int mm_slide(struct pf_reader *r, size_t off, size_t need)
{
    size_t start = off & ~(r->page - 1);
    size_t len = (off - start + need + r->page - 1) & ~(r->page - 1);
    void *m;

    if (r->nheld == PF_HELD)
        return 0;
    mm_check_size(r);              /* never map past a new end of file */
    if (off + need > r->file_len) {
        mm_shrunk(r);
        return -1;
    }
    if (r->next_p != NULL && r->next_off <= off &&
        off + need <= r->next_off + r->next_len) {
        m = r->next_p;             /* mapped ahead, populated (or on it) */
        start = r->next_off;
        len = r->next_len;
        r->next_p = NULL;
        goto mapped;
    }
    if (r->next_p != NULL) {       /* not where the walk went: drop it */
        mm_unmap(r, r->next_p, r->next_len);
        r->next_p = NULL;
    }
    if (len < r->win)
        len = r->win;
    if (len > r->file_len - start)
        len = r->file_len - start;
    m = mm_mmap(r, len, start, MAP_POPULATE);
    if (m == MAP_FAILED) {
        int e = errno;
        snprintf(r->errmsg, PF_ERRBUF_SIZE, "mmap of %zu bytes at offset "
                 "%zu: %s", len, start, strerror(e));
        r->err = -e;
        return -1;
    }
    (void)madvise(m, len, MADV_SEQUENTIAL);
mapped:
    if (start + len < r->file_len)   /* read the next window ahead (cold file) */
        (void)posix_fadvise(r->fd, (off_t)(start + len), (off_t)r->win,
                            POSIX_FADV_WILLNEED);
    r->held[r->nheld].p = (void *)r->map;
    r->held[r->nheld].len = r->map_len;
    r->nheld++;
    r->map = m;
    r->map_off = start;
    r->map_len = len;
    r->pf_off = off;
    r->windows++;
    mm_map_ahead(r);
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
    uint64_t capb = 0, wireb = 0;

    while (n < cap) {
        const uint8_t *h;
        size_t left = end - off, lim;
        uint32_t sec, frac, caplen, len, t;

        if (left == 0)
            break;
        if (left < PF_REC_HDR) {
            snprintf(r->errmsg, PF_ERRBUF_SIZE, "truncated record header "
                     "at offset %zu: only %zu bytes left", off, left);
            fail(r, -EBADMSG);
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
    r->pf_off = pf;
    r->st.cap_bytes += capb;
    r->st.wire_bytes += wireb;
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
    r->pf_off = r->off;
    r->windows = 1;
    r->is_mmap = 1;
    mm_ahead_start(r);
    return 1;
}

size_t pf_mm_batch(struct pf_reader *r, struct ft_pkt *out, size_t cap)
{
    size_t n;

    /* A SIGBUS since the last batch (in the flow engine, reading it) means
     * the file ends before r->off: nothing readable is left. */
    mm_check_size(r);
    if (atomic_load_explicit(&r->bus_fault, memory_order_relaxed) ||
        (r->shrunk && r->off > r->file_len)) {
        mm_shrunk(r);
        return 0;
    }
    /* two copies of the walk, the byte order a constant in each */
    n = r->byteswap ? mm_walk(r, out, cap, 1) : mm_walk(r, out, cap, 0);
    if (__builtin_expect(r->shrunk || atomic_load_explicit(
            &r->bus_fault, memory_order_relaxed), 0)) {
        if (r->err == 0 || r->err == -EBADMSG) {
            if (atomic_load_explicit(&r->bus_fault, memory_order_relaxed) ||
                r->err == -EBADMSG || r->off >= r->file_len)
                mm_shrunk(r);
        }
    }
    return n;
}

void pf_test_skip_fstat(struct pf_reader *r)
{
    r->test_no_fstat = 1;
}

void pf_mm_close(struct pf_reader *r)
{
    mm_ahead_stop(r);
    pf_mm_release_held(r);
    if (r->next_p != NULL)
        mm_unmap(r, r->next_p, r->next_len);
    if (r->map != NULL)
        mm_unmap(r, (void *)r->map, r->map_len);
    if (r->fd >= 0)
        close(r->fd);
}
