/*
 * flowtable.c - the flow table: hash -> update (the per-packet path) and
 * the table's life. The timer wheel walk, expiry and flush: expire.c;
 * the layout both share: ft_table.h.
 *
 * Structures, all allocated once by ft_new():
 *   flows    a slab of max_flows entries of 112 bytes (struct ft_flow);
 *   buckets  a power-of-two array of chain heads (flow index + 1, 0 = none);
 *   wheel    a timer wheel of doubly linked lists: each flow sits in the slot
 *            of its expiry deadline as computed when it was (re)inserted.
 *            Packets never move a flow in the wheel (that would cost two
 *            cache misses per packet); when a slot comes due each flow's
 *            real deadline is re-checked and the flow either expires or is
 *            re-inserted further on (lazy re-check);
 *   pending  a ring of expired records awaiting ft_expire();
 *   dpi      when dpi is on, nDPI's module and a pool of flow states
 *            (dpi.c): a new flow shares its reverse's state or takes one,
 *            and each packet of a flow under detection goes through nDPI
 *            after the flow's update, in the same ft_ingest() call.
 *
 * The forced end of every flow (ft_flush) walks the slab in index order,
 * not the wheel, and unlinks no flow: once past the last one it resets the
 * chains, the wheel, the free list and the fill mark at once (expire.c).
 * So ft_ingest() finishes a flush under way before it takes a packet.
 *
 * Expiry decisions are exact, whatever the wheel's granularity: a packet
 * that finds its flow past a deadline expires that flow first (inline), so
 * splits depend only on packet times and the timeouts.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>
#include <string.h>

#include "ft_table.h"

#define PIPE_D 8                       /* pipeline distance between stages */
#define PIPE_RING 32                   /* > 2 * PIPE_D, a power of two */
#define PF_DATA 32                     /* packet headers prefetched this far ahead */

uint32_t ft_flow_entry_size(void) { return (uint32_t)sizeof(struct ft_flow); }

static inline int key_eq(const struct ft_key *a, const struct ft_key *b)
{
    const uint64_t *x = (const uint64_t *)(const void *)a;
    const uint64_t *y = (const uint64_t *)(const void *)b;
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) |
            (x[4] ^ y[4]) | (x[5] ^ y[5])) == 0;
}

/* ---- flow life -------------------------------------------------------- */

static struct ft_flow *lookup(struct ft_table *t, const struct ft_key *k, uint64_t hash)
{
    uint32_t i = t->buckets[hash & t->bucket_mask];
    while (i) {
        struct ft_flow *f = &t->flows[i - 1];
        if (key_eq(&f->key, k))
            return f;
        i = f->hnext;
    }
    return NULL;
}

static struct ft_flow *create(struct ft_table *t, const struct ft_parsed *p, uint64_t ts)
{
    uint32_t id;
    if (!t->free_head && t->fresh < t->cfg.max_flows) {
        id = t->fresh++;    /* first use: the slab is touched only as it fills */
    } else {
        if (!t->free_head)
            ft_evict_one(t);
        id = t->free_head - 1;
        t->free_head = t->flows[id].hnext;
    }
    struct ft_flow *f = &t->flows[id];
    f->key = p->key;
    f->packets = f->octets = 0;
    f->first_ns = f->last_ns = ts;
    f->inner_vlan = p->inner_vlan;
    f->tcp_flags = 0;
    f->ttl_min = f->ttl_max = p->ttl;
    f->state = FLOW_USED | (p->has_mac ? FLOW_MAC : 0);
    if (p->has_mac)
        memcpy(f->mac, p->mac, 12);
    uint32_t *b = &t->buckets[p->hash & t->bucket_mask];
    f->hnext = *b;
    *b = id + 1;
    wheel_insert(t, id);
    t->st.flows_created++;
    if (++t->st.flows_active > t->st.flows_peak)
        t->st.flows_peak = t->st.flows_active;
    return f;
}

static void mark_closing(struct ft_table *t, struct ft_flow *f)
{
    if (f->state & FLOW_CLOSING)
        return;
    f->state |= FLOW_CLOSING;
    uint32_t id = (uint32_t)(f - t->flows);
    wheel_unlink(t, id);
    wheel_insert(t, id);
}

/* The flow of the opposite direction (same ifindex and VLAN), or NULL: the
 * one with the same ToS, else one with any ToS. The two directions of a
 * conversation often differ in DSCP (a server marking its answers), and a
 * ToS change mid-flow starts a new flow: both must still find their
 * reverse, to share its DPI state and to see FIN both ways. key_hash()
 * leaves ToS out, so every ToS of a reverse key is in the same chain. */
_Static_assert(offsetof(struct ft_key, ipver) == offsetof(struct ft_key, tos) + 1,
               "reverse_of(): the key fields before tos, and ipver, are the conversation");

static struct ft_flow *reverse_of(struct ft_table *t, const struct ft_flow *f)
{
    struct ft_key rk = f->key;
    memcpy(rk.src, f->key.dst, 16);
    memcpy(rk.dst, f->key.src, 16);
    rk.sport = f->key.dport;
    rk.dport = f->key.sport;
    uint64_t h = key_hash(t, &rk);
    struct ft_flow *r = lookup(t, &rk, h);
    if (r)
        return r;
    for (uint32_t i = t->buckets[h & t->bucket_mask]; i; i = t->flows[i - 1].hnext) {
        const struct ft_key *k = &t->flows[i - 1].key;
        if (memcmp(k, &rk, offsetof(struct ft_key, tos)) == 0 && k->ipver == rk.ipver)
            return &t->flows[i - 1];
    }
    return NULL;
}

/* FIN both ways, or a RST either way, ends a TCP conversation. */
static void tcp_end(struct ft_table *t, struct ft_flow *f, uint8_t flags)
{
    struct ft_flow *r = reverse_of(t, f);
    if (flags & FT_TCP_RST) {
        mark_closing(t, f);
        if (r)
            mark_closing(t, r);
        return;
    }
    f->state |= FLOW_FIN;
    if (r && (r->state & FLOW_FIN)) {
        mark_closing(t, f);
        mark_closing(t, r);
    }
}

static void account(struct ft_table *t, const struct ft_parsed *p, uint64_t ts)
{
    struct ft_flow *f = lookup(t, &p->key, p->hash);
    if (f) {
        int reason = due_reason(t, f, ts);
        if (reason) {
            ft_expire_flow(t, f, reason);
            if (!(f->state & FLOW_USED))
                f = NULL; /* freed; else kept, emptied (expire.c) */
        }
    }
    if (!f) {
        f = create(t, p, ts);
        if (t->dpi)
            ft_dpi_attach(t, f, reverse_of(t, f));
    } else if (f->packets == 0) {
        /* The first packet of a flow kept over an active timeout. */
        f->first_ns = f->last_ns = ts;
        f->ttl_min = f->ttl_max = p->ttl;
    }
    f->packets++;
    f->octets += p->octets;
    if (ts > f->last_ns)
        f->last_ns = ts;
    if (ts < f->first_ns)
        f->first_ns = ts;
    if (p->ttl < f->ttl_min)
        f->ttl_min = p->ttl;
    if (p->ttl > f->ttl_max)
        f->ttl_max = p->ttl;
    f->tcp_flags |= p->tcp_flags;
    if (f->state & FLOW_DPI)
        ft_dpi_inspect(t, f, p, ts);
    if (p->key.proto == 6 && (p->tcp_flags & (FT_TCP_FIN | FT_TCP_RST)))
        tcp_end(t, f, p->tcp_flags);
}

/* ---- public API ------------------------------------------------------- */

/* Zeroed memory, on transparent huge pages where the kernel allows: the
 * slab is accessed at random and would otherwise cost a TLB miss per flow. */
static void *big_alloc(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    madvise(p, len, MADV_HUGEPAGE);
    return p;
}

static void big_free(void *p, size_t len)
{
    if (p)
        munmap(p, len);
}

/* ---- the slab's pages, mapped ahead (cfg.prefault) ---------------------
 *
 * A page of the slab is zero-filled by the kernel when first written: on
 * the 10M-packet IMIX replay (1M flows, 112 MB) that was ~15% of the
 * caller's thread, in 2 MB stalls (huge pages), while the file's reader
 * thread had time to spare. With prefault a helper thread maps the slab
 * (MADV_POPULATE_WRITE, Linux 5.14+) up to PREFAULT_AHEAD bytes past the
 * flows taken so far; ft_ingest() moves that mark once per call and wakes
 * the helper only when it passed a PREFAULT_STEP. Flows are taken from the
 * slab in index order (fresh), so the mark is exact. A kernel without the
 * advice ends the helper; the caller then faults pages in itself as
 * before. Replay only: live readers are one per CPU already. */

#ifndef PREFAULT_STEP                 /* the sanitizer builds set small ones */
#define PREFAULT_STEP ((size_t)2 << 20)
#endif
#ifndef PREFAULT_AHEAD
#define PREFAULT_AHEAD ((size_t)16 << 20)
#endif

struct ft_prefault {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint8_t *base;
    size_t len;      /* the slab */
    size_t done;     /* [0, done) is mapped (helper's, under mu) */
    size_t want;     /* map up to here (caller's, under mu) */
    int stop;
};

static void *prefault_main(void *arg)
{
    struct ft_prefault *pf = arg;

    pthread_mutex_lock(&pf->mu);
    for (;;) {
        while (!pf->stop && pf->done >= pf->want)
            pthread_cond_wait(&pf->cv, &pf->mu);
        if (pf->stop)
            break;
        size_t from = pf->done, to = pf->want;
        if (to - from > PREFAULT_STEP)
            to = from + PREFAULT_STEP;
        pthread_mutex_unlock(&pf->mu);
        int rc = madvise(pf->base + from, to - from, MADV_POPULATE_WRITE);
        pthread_mutex_lock(&pf->mu);
        if (rc != 0)
            break;                 /* no such advice here, or no memory */
        pf->done = to;
    }
    pthread_mutex_unlock(&pf->mu);
    return NULL;
}

/* Ask for the slab to be mapped up to `bytes` (capped at its end). */
static void prefault_ask(struct ft_table *t, size_t bytes)
{
    struct ft_prefault *pf = t->prefault;

    if (bytes > pf->len)
        bytes = pf->len;
    pthread_mutex_lock(&pf->mu);
    if (bytes > pf->want) {
        pf->want = bytes;
        pthread_cond_signal(&pf->cv);
    }
    pthread_mutex_unlock(&pf->mu);
    t->prefault_asked = bytes;
}

static void prefault_start(struct ft_table *t)
{
    struct ft_prefault *pf = calloc(1, sizeof(*pf));
    sigset_t all, old;

    if (!pf)
        return;
    pf->base = (uint8_t *)t->flows;
    pf->len = (size_t)t->cfg.max_flows * sizeof(struct ft_flow);
    if (pthread_mutex_init(&pf->mu, NULL) != 0)
        goto fail;
    if (pthread_cond_init(&pf->cv, NULL) != 0)
        goto fail_mu;
    /* signals stay with the caller's threads (Python's handlers run there) */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&pf->th, NULL, prefault_main, pf);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        goto fail_cv;
    t->prefault = pf;
    prefault_ask(t, PREFAULT_AHEAD);
    return;
fail_cv:
    pthread_cond_destroy(&pf->cv);
fail_mu:
    pthread_mutex_destroy(&pf->mu);
fail:
    free(pf);
}

long long ft_test_slab_resident(const struct ft_table *t)
{
    size_t len = (size_t)t->cfg.max_flows * sizeof(struct ft_flow);
    long pg = sysconf(_SC_PAGESIZE);
    size_t page = pg > 0 ? (size_t)pg : 4096;
    size_t pages = (len + page - 1) / page;
    unsigned char *vec = malloc(pages);
    long long bytes = 0;

    if (!vec || mincore(t->flows, len, vec) != 0) {
        free(vec);
        return -1;
    }
    for (size_t i = 0; i < pages; i++)
        bytes += (long long)(vec[i] & 1) * (long long)page;
    free(vec);
    return bytes;
}

static void prefault_stop(struct ft_table *t)
{
    struct ft_prefault *pf = t->prefault;

    if (!pf)
        return;
    pthread_mutex_lock(&pf->mu);
    pf->stop = 1;
    pthread_cond_signal(&pf->cv);
    pthread_mutex_unlock(&pf->mu);
    pthread_join(pf->th, NULL);
    pthread_cond_destroy(&pf->cv);
    pthread_mutex_destroy(&pf->mu);
    free(pf);
    t->prefault = NULL;
}

struct ft_table *ft_new(const struct ft_config *cfg, int *err)
{
    *err = -EINVAL;
    if (!cfg || cfg->max_flows == 0 || cfg->max_flows > (1u << 31) ||
        cfg->record_buffer < 64 * RECORDS_PER_PACKET ||
        cfg->idle_timeout_ns == 0 || cfg->active_timeout_ns == 0 ||
        (cfg->dpi && (cfg->dpi_max_flows == 0 || cfg->dpi_max_flows > (1u << 24))))
        return NULL;
    *err = -ENOMEM;
    struct ft_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->cfg = *cfg;
    if (getrandom(t->seed, sizeof(t->seed), GRND_NONBLOCK) != (ssize_t)sizeof(t->seed)) {
        /* No entropy yet (early boot): fall back to fixed odd constants. */
        for (int i = 0; i < 8; i++)
            t->seed[i] = 0x9e3779b97f4a7c15ull * (uint64_t)(2 * i + 1);
    }
    for (int i = 0; i < 8; i++)
        t->seed[i] |= 1; /* never a zero multiplier */
    uint32_t nb = 1024;
    while (nb < cfg->max_flows)
        nb <<= 1;
    t->bucket_mask = nb - 1;
    t->flows = big_alloc((size_t)cfg->max_flows * sizeof(struct ft_flow));
    t->buckets = big_alloc((size_t)nb * sizeof(uint32_t));
    t->pending = calloc(cfg->record_buffer, sizeof(struct ft_record));
    if (!t->flows || !t->buckets || !t->pending) {
        ft_free(t);
        return NULL;
    }
    if (cfg->dpi) {
        t->dpi = ft_dpi_new(cfg->dpi_max_flows, cfg->max_flows, err);
        if (!t->dpi) {
            ft_free(t);
            return NULL;
        }
    }
    /* No free list to build: flows are taken from [fresh, max_flows) until
     * it runs out, so memory is touched only as flows are created. */
    for (uint32_t s = 0; s < WHEEL_SLOTS; s++)
        t->slot_prev[s] = t->slot_next[s] = cfg->max_flows + s;
    if (cfg->prefault)
        prefault_start(t);         /* best effort: without it, as before */
    *err = 0;
    return t;
}

void ft_free(struct ft_table *t)
{
    if (!t)
        return;
    prefault_stop(t);
    big_free(t->flows, (size_t)t->cfg.max_flows * sizeof(struct ft_flow));
    big_free(t->buckets, ((size_t)t->bucket_mask + 1) * sizeof(uint32_t));
    free(t->pending);
    ft_dpi_free(t->dpi);
    free(t);
}

uint64_t ft_memory_bytes(const struct ft_table *t)
{
    return sizeof(*t) + (uint64_t)t->cfg.max_flows * sizeof(struct ft_flow) +
           ((uint64_t)t->bucket_mask + 1) * sizeof(uint32_t) +
           (uint64_t)t->cfg.record_buffer * sizeof(struct ft_record) +
           (t->dpi ? ft_dpi_memory_bytes(t->dpi) : 0);
}

/* Accounting of one parsed packet (stage 3 of the pipeline). */
static void ingest_one(struct ft_table *t, uint32_t linktype, int verdict,
                       const struct ft_parsed *p, uint64_t ts)
{
    t->st.packets_seen++;
    if (verdict != FT_PARSE_OK) {
        t->st.skipped[verdict]++;
        if (verdict == FT_SKIP_LINKTYPE)
            t->st.last_linktype_unsupported = (uint64_t)linktype;
        return;
    }
    if (ts > t->st.now_ns)
        t->st.now_ns = ts;
    t->st.packets_accepted++;
    t->st.octets_accepted += p->octets;
    t->st.l4_partial += p->l4_partial;
    t->st.fragments += p->fragment;
    account(t, p, ts);
}

/*
 * A software pipeline over the batch, so that memory latency overlaps:
 * at step j, packet j + PF_DATA has its headers prefetched, packet j is
 * parsed and its chain head prefetched, the chain head of packet j - D is
 * read and its first flow prefetched, and packet j - 2D is accounted.
 */
int ft_ingest(struct ft_table *t, uint32_t linktype, const struct ft_pkt *pkts, size_t n,
              size_t *consumed)
{
    struct ft_parsed ring[PIPE_RING];
    int verdict[PIPE_RING];
    *consumed = 0;
    if (!t || (!pkts && n))
        return -EINVAL;
    /* A flush under way leaves emitted flows in the chains and the wheel
     * (expire.c): it ends first, so these packets start new flows. */
    if (n && t->flushing && !ft_flush_some(t))
        return 0; /* the pending buffer is full: drain, call again */
    /* Take only as many packets as the pending buffer has room for. */
    size_t room = pending_free(t) / RECORDS_PER_PACKET;
    if (n > room)
        n = room;
    if (n && !t->wheel_started)
        wheel_start(t, pkts[0].ts_ns);

    for (size_t j = 0; j < n + 2 * PIPE_D; j++) {
        if (j + PF_DATA < n) {
            __builtin_prefetch(pkts[j + PF_DATA].data);
            __builtin_prefetch(pkts[j + PF_DATA].data + 64);
        }
        if (j < n) {
            const struct ft_pkt *p = &pkts[j];
            struct ft_parsed *o = &ring[j % PIPE_RING];
            int v = ft_parse(p, linktype, o);
            verdict[j % PIPE_RING] = v;
            if (v == FT_PARSE_OK) {
                if (!o->key.ifindex)
                    o->key.ifindex = p->ifindex ? p->ifindex : t->cfg.ifindex;
                o->hash = key_hash(t, &o->key);
                __builtin_prefetch(&t->buckets[o->hash & t->bucket_mask]);
            }
        }
        if (j >= PIPE_D && j - PIPE_D < n) {
            size_t i = j - PIPE_D;
            if (verdict[i % PIPE_RING] == FT_PARSE_OK) {
                uint32_t head = t->buckets[ring[i % PIPE_RING].hash & t->bucket_mask];
                if (head) {
                    /* An entry spans two or three cache lines: fetch all. */
                    const char *f = (const char *)&t->flows[head - 1];
                    __builtin_prefetch(f, 1);
                    __builtin_prefetch(f + 64, 1);
                    __builtin_prefetch(f + sizeof(struct ft_flow) - 1, 1);
                }
            }
        }
        if (j >= 2 * PIPE_D) {
            size_t i = j - 2 * PIPE_D;
            ingest_one(t, linktype, verdict[i % PIPE_RING], &ring[i % PIPE_RING], pkts[i].ts_ns);
        }
    }
    *consumed = n;
    if (t->prefault) {
        /* in whole steps: madvise() takes page-aligned starts only */
        size_t mark = (size_t)t->fresh * sizeof(struct ft_flow) + PREFAULT_AHEAD;
        mark = (mark + PREFAULT_STEP - 1) / PREFAULT_STEP * PREFAULT_STEP;
        if (mark >= t->prefault_asked + PREFAULT_STEP)
            prefault_ask(t, mark);
    }
    return 0;
}

void ft_get_stats(const struct ft_table *t, struct ft_stats *out)
{
    *out = t->st;
    out->records_pending = t->pending_count;
}
