/*
 * flowtable.c - the flow table: hash -> update -> expire.
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
 *   pending  a ring of expired records awaiting ft_expire().
 *
 * Expiry decisions are exact, whatever the wheel's granularity: a packet
 * that finds its flow past a deadline expires that flow first (inline), so
 * splits depend only on packet times and the timeouts.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <string.h>

#include "ft_internal.h"

#define WHEEL_SHIFT 26                 /* slot width 2^26 ns = 67 ms */
/* Slot k holds deadlines in [(k-1) << SHIFT, k << SHIFT): slot 0 is never
 * used, so "processed up to slot k - 1" never underflows at time 0. */
#define SLOT_OF(ns) (((ns) >> WHEEL_SHIFT) + 1)
#define WHEEL_SLOTS 4096u              /* horizon 275 s; later deadlines re-checked */
#define WHEEL_MASK (WHEEL_SLOTS - 1)
#define NIL UINT32_MAX
#define PIPE_D 8                       /* pipeline distance between stages */
#define PIPE_RING 32                   /* > 2 * PIPE_D, a power of two */
#define PF_DATA 32                     /* packet headers prefetched this far ahead */
#define EVICT_RECHECKS 8
#define RECORDS_PER_PACKET 2           /* worst case: its own flow + an eviction */

enum { FLOW_USED = 1, FLOW_FIN = 2, FLOW_CLOSING = 4, FLOW_MAC = 8 };

struct ft_flow {
    struct ft_key key;
    uint64_t packets;
    uint64_t octets;
    uint64_t first_ns;
    uint64_t last_ns;
    uint32_t hnext;        /* hash chain: flow index + 1, or 0; free list too */
    uint32_t wprev, wnext; /* wheel links: node ids (flows, then slot heads) */
    uint16_t inner_vlan;
    uint8_t tcp_flags;
    uint8_t ttl_min;
    uint8_t ttl_max;
    uint8_t state;
    uint8_t mac[12];       /* destination, then source */
    uint8_t pad[2];
};

_Static_assert(sizeof(struct ft_key) == 48, "flow key is six words");
_Static_assert(sizeof(struct ft_flow) == 112, "flow entry size");

struct ft_table {
    struct ft_config cfg;
    struct ft_flow *flows;
    uint32_t *buckets;
    uint32_t bucket_mask;
    uint32_t free_head;             /* freed flows: index + 1, 0 = none */
    uint32_t fresh;                 /* flows [fresh, max_flows) never used */
    uint32_t slot_prev[WHEEL_SLOTS];
    uint32_t slot_next[WHEEL_SLOTS];
    uint64_t wheel_done;            /* slots <= this absolute slot are processed */
    int wheel_started;
    int flushing;
    uint32_t flush_slot;
    uint64_t evict_slot;            /* where the last eviction found a flow */
    struct ft_record *pending;
    uint32_t pending_head;
    uint32_t pending_count;
    struct ft_stats st;
    uint64_t seed[8];               /* hash seed, from getrandom() */
};

uint32_t ft_flow_entry_size(void) { return (uint32_t)sizeof(struct ft_flow); }

/* ---- hashing ---------------------------------------------------------- */

/* 64x64 -> 128-bit multiply, folded: the mixing step of wyhash. */
static inline uint64_t mum(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* Three independent multiplies over the six key words (they overlap in the
 * pipeline, unlike a serial chain), then one to mix. The per-table seed
 * comes from getrandom(): traffic cannot aim keys at one chain. */
static inline uint64_t key_hash(const struct ft_table *t, const struct ft_key *k)
{
    uint64_t w[6];
    const uint64_t *s = t->seed;
    memcpy(w, k, sizeof(w));
    uint64_t h = mum(w[0] ^ s[0], w[1] ^ s[1]) ^ mum(w[2] ^ s[2], w[3] ^ s[3]) ^
                 mum(w[4] ^ s[4], w[5] ^ s[5]);
    return mum(h ^ s[6], s[7]);
}

static inline int key_eq(const struct ft_key *a, const struct ft_key *b)
{
    const uint64_t *x = (const uint64_t *)(const void *)a;
    const uint64_t *y = (const uint64_t *)(const void *)b;
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) |
            (x[4] ^ y[4]) | (x[5] ^ y[5])) == 0;
}

/* ---- timer wheel ------------------------------------------------------ */

static inline uint32_t *node_prev(struct ft_table *t, uint32_t id)
{
    return id < t->cfg.max_flows ? &t->flows[id].wprev : &t->slot_prev[id - t->cfg.max_flows];
}

static inline uint32_t *node_next(struct ft_table *t, uint32_t id)
{
    return id < t->cfg.max_flows ? &t->flows[id].wnext : &t->slot_next[id - t->cfg.max_flows];
}

static void wheel_unlink(struct ft_table *t, uint32_t id)
{
    struct ft_flow *f = &t->flows[id];
    *node_next(t, f->wprev) = f->wnext;
    *node_prev(t, f->wnext) = f->wprev;
    f->wprev = f->wnext = NIL;
}

static uint64_t flow_deadline(const struct ft_table *t, const struct ft_flow *f)
{
    uint64_t d = f->last_ns + ((f->state & FLOW_CLOSING) ? t->cfg.tcp_end_grace_ns
                                                           : t->cfg.idle_timeout_ns);
    uint64_t a = f->first_ns + t->cfg.active_timeout_ns;
    return a < d ? a : d;
}

/* Insert into the slot of its deadline, at least the next unprocessed slot
 * and at most the wheel's horizon (further deadlines are re-checked). */
static void wheel_insert(struct ft_table *t, uint32_t id)
{
    uint64_t slot = SLOT_OF(flow_deadline(t, &t->flows[id]));
    if (slot <= t->wheel_done)
        slot = t->wheel_done + 1;
    if (slot > t->wheel_done + WHEEL_SLOTS - 1)
        slot = t->wheel_done + WHEEL_SLOTS - 1;
    uint32_t head = t->cfg.max_flows + (uint32_t)(slot & WHEEL_MASK);
    uint32_t first = *node_next(t, head);
    t->flows[id].wprev = head;
    t->flows[id].wnext = first;
    *node_prev(t, first) = id;
    *node_next(t, head) = id;
}

static void wheel_start(struct ft_table *t, uint64_t now_ns)
{
    if (!t->wheel_started) {
        t->wheel_done = SLOT_OF(now_ns) - 1;
        t->wheel_started = 1;
    }
}

/* ---- records ---------------------------------------------------------- */

static inline uint32_t pending_free(const struct ft_table *t)
{
    return t->cfg.record_buffer - t->pending_count;
}

static void emit(struct ft_table *t, const struct ft_flow *f, int reason)
{
    uint32_t at = (t->pending_head + t->pending_count) % t->cfg.record_buffer;
    struct ft_record *r = &t->pending[at];
    memcpy(r->src_addr, f->key.src, 16);
    memcpy(r->dst_addr, f->key.dst, 16);
    r->packets = f->packets;
    r->octets = f->octets;
    r->first_ns = f->first_ns;
    r->last_ns = f->last_ns;
    r->ifindex = f->key.ifindex;
    r->src_port = f->key.sport;
    r->dst_port = f->key.dport;
    r->vlan = f->key.vlan;
    r->inner_vlan = f->inner_vlan;
    r->protocol = f->key.proto;
    r->tos = f->key.tos;
    r->tcp_flags = f->tcp_flags;
    r->ip_version = f->key.ipver;
    r->ttl_min = f->ttl_min;
    r->ttl_max = f->ttl_max;
    r->end_reason = (uint8_t)reason;
    r->has_mac = (f->state & FLOW_MAC) ? 1 : 0;
    memcpy(r->dst_mac, f->mac, 6);
    memcpy(r->src_mac, f->mac + 6, 6);
    t->pending_count++;
    t->st.flows_expired[reason]++;
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

/* Emit and free a flow: unlink from its hash chain and the wheel. */
static void expire_flow(struct ft_table *t, struct ft_flow *f, int reason)
{
    uint32_t id = (uint32_t)(f - t->flows);
    emit(t, f, reason);
    uint32_t *pp = &t->buckets[key_hash(t, &f->key) & t->bucket_mask];
    while (*pp != id + 1)
        pp = &t->flows[*pp - 1].hnext;
    *pp = f->hnext;
    wheel_unlink(t, id);
    f->state = 0;
    f->hnext = t->free_head;
    t->free_head = id + 1;
    t->st.flows_active--;
}

/* The reason a flow is due at now_ns, or 0 when it is not due. */
static int due_reason(const struct ft_table *t, const struct ft_flow *f, uint64_t now_ns)
{
    if ((f->state & FLOW_CLOSING) && now_ns >= f->last_ns + t->cfg.tcp_end_grace_ns)
        return FT_END_TCP;
    if (now_ns >= f->last_ns + t->cfg.idle_timeout_ns)
        return FT_END_IDLE;
    if (now_ns >= f->first_ns + t->cfg.active_timeout_ns)
        return FT_END_ACTIVE;
    return 0;
}

/* Table full: evict the flow with the earliest deadline (approximately:
 * the head of the earliest non-empty slot, after a few lazy re-checks). */
static void evict_one(struct ft_table *t)
{
    uint64_t lo = t->wheel_done + 1, hi = t->wheel_done + WHEEL_SLOTS - 1;
    uint64_t slot = t->evict_slot > lo ? t->evict_slot : lo;
    int rechecks = 0, wrapped = 0;
    for (;;) {
        if (slot > hi) {
            if (wrapped++)
                return; /* unreachable while the table is full */
            slot = lo;
        }
        uint32_t head = t->cfg.max_flows + (uint32_t)(slot & WHEEL_MASK);
        uint32_t id = *node_next(t, head);
        if (id == head) {
            slot++;
            continue;
        }
        t->evict_slot = slot;
        struct ft_flow *f = &t->flows[id];
        if (rechecks < EVICT_RECHECKS && SLOT_OF(flow_deadline(t, f)) > slot) {
            rechecks++;
            wheel_unlink(t, id);
            wheel_insert(t, id);
            continue;
        }
        expire_flow(t, f, FT_END_RESOURCES);
        return;
    }
}

static struct ft_flow *create(struct ft_table *t, const struct ft_parsed *p, uint64_t ts)
{
    uint32_t id;
    if (!t->free_head && t->fresh < t->cfg.max_flows) {
        id = t->fresh++;    /* first use: the slab is touched only as it fills */
    } else {
        if (!t->free_head)
            evict_one(t);
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

/* FIN both ways, or a RST either way, ends a TCP conversation. */
static void tcp_end(struct ft_table *t, struct ft_flow *f, uint8_t flags)
{
    struct ft_key rk = f->key;
    memcpy(rk.src, f->key.dst, 16);
    memcpy(rk.dst, f->key.src, 16);
    rk.sport = f->key.dport;
    rk.dport = f->key.sport;
    struct ft_flow *r = lookup(t, &rk, key_hash(t, &rk));
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
            expire_flow(t, f, reason);
            f = NULL;
        }
    }
    if (!f)
        f = create(t, p, ts);
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

struct ft_table *ft_new(const struct ft_config *cfg, int *err)
{
    *err = -EINVAL;
    if (!cfg || cfg->max_flows == 0 || cfg->max_flows > (1u << 31) ||
        cfg->record_buffer < 64 * RECORDS_PER_PACKET ||
        cfg->idle_timeout_ns == 0 || cfg->active_timeout_ns == 0)
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
    /* No free list to build: flows are taken from [fresh, max_flows) until
     * it runs out, so memory is touched only as flows are created. */
    for (uint32_t s = 0; s < WHEEL_SLOTS; s++)
        t->slot_prev[s] = t->slot_next[s] = cfg->max_flows + s;
    *err = 0;
    return t;
}

void ft_free(struct ft_table *t)
{
    if (!t)
        return;
    big_free(t->flows, (size_t)t->cfg.max_flows * sizeof(struct ft_flow));
    big_free(t->buckets, ((size_t)t->bucket_mask + 1) * sizeof(uint32_t));
    free(t->pending);
    free(t);
}

uint64_t ft_memory_bytes(const struct ft_table *t)
{
    return sizeof(*t) + (uint64_t)t->cfg.max_flows * sizeof(struct ft_flow) +
           ((uint64_t)t->bucket_mask + 1) * sizeof(uint32_t) +
           (uint64_t)t->cfg.record_buffer * sizeof(struct ft_record);
}

/* Accounting of one parsed packet (stage 3 of the pipeline). */
static void ingest_one(struct ft_table *t, int linktype, int verdict,
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
int ft_ingest(struct ft_table *t, int linktype, const struct ft_pkt *pkts, size_t n,
              size_t *consumed)
{
    struct ft_parsed ring[PIPE_RING];
    int verdict[PIPE_RING];
    *consumed = 0;
    if (!t || (!pkts && n))
        return -EINVAL;
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
    return 0;
}

/* Process whole slots up to now_ns while there is room for their records.
 * Returns 1 when the wheel is caught up. */
static int advance(struct ft_table *t, uint64_t now_ns)
{
    if (!t->wheel_started)
        return 1;
    uint64_t target = (now_ns + 1) >> WHEEL_SHIFT; /* last slot fully passed */
    if (target > t->wheel_done + WHEEL_SLOTS)
        t->wheel_done = target - WHEEL_SLOTS; /* every slot gets one visit */
    while (t->wheel_done < target) {
        uint64_t slot = t->wheel_done + 1;
        uint32_t head = t->cfg.max_flows + (uint32_t)(slot & WHEEL_MASK);
        uint32_t id;
        while ((id = *node_next(t, head)) != head) {
            struct ft_flow *f = &t->flows[id];
            int reason = due_reason(t, f, now_ns);
            if (!reason) {
                wheel_unlink(t, id);
                /* Re-insert past this slot: it is being processed. */
                uint64_t saved = t->wheel_done;
                t->wheel_done = slot;
                wheel_insert(t, id);
                t->wheel_done = saved;
                continue;
            }
            if (pending_free(t) == 0)
                return 0;
            expire_flow(t, f, reason);
        }
        t->wheel_done = slot;
    }
    return 1;
}

/* Forced end of every flow, slot by slot, while there is room. */
static int flush_some(struct ft_table *t)
{
    while (t->flush_slot < WHEEL_SLOTS) {
        uint32_t head = t->cfg.max_flows + t->flush_slot;
        uint32_t id;
        while ((id = *node_next(t, head)) != head) {
            if (pending_free(t) == 0)
                return 0;
            expire_flow(t, &t->flows[id], FT_END_FORCED);
        }
        t->flush_slot++;
    }
    t->flushing = 0;
    return 1;
}

size_t ft_expire(struct ft_table *t, uint64_t now_ns, struct ft_record *out, size_t cap)
{
    size_t n = 0;
    if (now_ns > t->st.now_ns)
        t->st.now_ns = now_ns;
    if (now_ns && !t->wheel_started)
        wheel_start(t, now_ns);
    for (;;) {
        while (n < cap && t->pending_count) {
            const struct ft_record *r = &t->pending[t->pending_head];
            out[n++] = *r;
            t->st.records_emitted++;
            t->st.packets_emitted += r->packets;
            t->st.octets_emitted += r->octets;
            t->pending_head = (t->pending_head + 1) % t->cfg.record_buffer;
            t->pending_count--;
        }
        if (n == cap)
            break;
        int caught_up = t->flushing ? flush_some(t) : advance(t, t->st.now_ns);
        if (caught_up && !t->pending_count)
            break;
    }
    return n;
}

size_t ft_flush(struct ft_table *t)
{
    t->flushing = 1;
    t->flush_slot = 0;
    return (size_t)t->st.flows_active;
}

void ft_get_stats(const struct ft_table *t, struct ft_stats *out)
{
    *out = t->st;
    out->records_pending = t->pending_count;
}

int ft_set_timeouts(struct ft_table *t, uint64_t idle_ns, uint64_t active_ns,
                    uint64_t tcp_end_grace_ns)
{
    if (idle_ns == 0 || active_ns == 0)
        return -EINVAL;
    if (t->flushing)
        return -EBUSY;
    t->cfg.idle_timeout_ns = idle_ns;
    t->cfg.active_timeout_ns = active_ns;
    t->cfg.tcp_end_grace_ns = tcp_end_grace_ns;
    for (uint32_t id = 0; id < t->fresh; id++) {
        if (t->flows[id].state & FLOW_USED) {
            wheel_unlink(t, id);
            wheel_insert(t, id);
        }
    }
    return 0;
}
