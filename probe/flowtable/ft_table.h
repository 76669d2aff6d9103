/*
 * ft_table.h - the table's layout and the small helpers both halves of the
 * table use: flowtable.c (hash, flow life, ingest) and expire.c (timer
 * wheel walk, records, flush). Private to the _flowtable extension; the
 * API is flowtable.h. The helpers are static inline so that the per-packet
 * path compiles as one unit, as before the split.
 */
#ifndef FT_TABLE_H
#define FT_TABLE_H

#include <string.h>

#include "ft_internal.h"

#define WHEEL_SHIFT 26                 /* slot width 2^26 ns = 67 ms */
/* Slot k holds deadlines in [(k-1) << SHIFT, k << SHIFT): slot 0 is never
 * used, so "processed up to slot k - 1" never underflows at time 0. */
#define SLOT_OF(ns) (((ns) >> WHEEL_SHIFT) + 1)
#define WHEEL_SLOTS 4096u              /* horizon 275 s; later deadlines re-checked */
#define WHEEL_MASK (WHEEL_SLOTS - 1)
#define NIL UINT32_MAX
#define RECORDS_PER_PACKET 2           /* worst case: its own flow + an eviction */

/* FLOW_DPI: under detection, its nDPI state is in dpi.c's per-flow side
 * array (the label lives there too, so entries stay 112 bytes and DPI off
 * costs nothing). */
enum { FLOW_USED = 1, FLOW_FIN = 2, FLOW_CLOSING = 4, FLOW_MAC = 8, FLOW_DPI = 16 };

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
    int flushing;                   /* a flush is under way (expire.c) */
    uint32_t flush_next;            /* its cursor: the next flow index to end */
    uint64_t evict_slot;            /* where the last eviction found a flow */
    struct ft_record *pending;
    uint32_t pending_head;
    uint32_t pending_count;
    struct ft_stats st;
    uint64_t seed[8];               /* hash seed, from getrandom() */
    struct ft_dpi *dpi;             /* NULL when DPI is off (dpi.c) */
    struct ft_prefault *prefault;   /* NULL unless cfg.prefault (flowtable.c) */
    size_t prefault_asked;          /* slab bytes last asked of it */
};

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
    /* ToS is left out: flows of one conversation that differ only in ToS
     * (the two directions often carry different DSCP) share a chain, where
     * reverse_of() finds them. */
    struct ft_key nk = *k;
    nk.tos = 0;
    memcpy(w, &nk, sizeof(w));
    uint64_t h = mum(w[0] ^ s[0], w[1] ^ s[1]) ^ mum(w[2] ^ s[2], w[3] ^ s[3]) ^
                 mum(w[4] ^ s[4], w[5] ^ s[5]);
    return mum(h ^ s[6], s[7]);
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

static inline void wheel_unlink(struct ft_table *t, uint32_t id)
{
    struct ft_flow *f = &t->flows[id];
    *node_next(t, f->wprev) = f->wnext;
    *node_prev(t, f->wnext) = f->wprev;
    f->wprev = f->wnext = NIL;
}

static inline uint64_t flow_deadline(const struct ft_table *t, const struct ft_flow *f)
{
    uint64_t d = f->last_ns + ((f->state & FLOW_CLOSING) ? t->cfg.tcp_end_grace_ns
                                                           : t->cfg.idle_timeout_ns);
    uint64_t a = f->first_ns + t->cfg.active_timeout_ns;
    return a < d ? a : d;
}

/* Insert into the slot of its deadline, at least the next unprocessed slot
 * and at most the wheel's horizon (further deadlines are re-checked). */
static inline void wheel_insert(struct ft_table *t, uint32_t id)
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

static inline void wheel_start(struct ft_table *t, uint64_t now_ns)
{
    if (!t->wheel_started) {
        t->wheel_done = SLOT_OF(now_ns) - 1;
        t->wheel_started = 1;
    }
}

/* ---- expiry ----------------------------------------------------------- */

static inline uint32_t pending_free(const struct ft_table *t)
{
    return t->cfg.record_buffer - t->pending_count;
}

/* The reason a flow is due at now_ns, or 0 when it is not due. */
static inline int due_reason(const struct ft_table *t, const struct ft_flow *f, uint64_t now_ns)
{
    if ((f->state & FLOW_CLOSING) && now_ns >= f->last_ns + t->cfg.tcp_end_grace_ns)
        return FT_END_TCP;
    if (now_ns >= f->last_ns + t->cfg.idle_timeout_ns)
        return FT_END_IDLE;
    if (now_ns >= f->first_ns + t->cfg.active_timeout_ns)
        return FT_END_ACTIVE;
    return 0;
}

/* expire.c: emit a flow's record and free it (hash chain, wheel); make
 * room when the table is full by evicting the flow due first. */
void ft_expire_flow(struct ft_table *t, struct ft_flow *f, int reason);
void ft_evict_one(struct ft_table *t);
/* Carry a flush on while the pending buffer has room: 1 once every flow is
 * ended and the table is empty again, else 0. Until then flows already
 * emitted are still in the chains and the wheel (expire.c). */
int ft_flush_some(struct ft_table *t);

/* ---- application identification (dpi.c) -------------------------------- */

struct ft_dpi;

/* Allocate the nDPI module, a pool of `slots` flow states and the label
 * side array of max_flows entries; NULL with *err set (-ENOMEM, -ENOSYS on
 * a library/header mismatch). */
struct ft_dpi *ft_dpi_new(uint32_t slots, uint32_t max_flows, int *err);
/* Frees the pool (releasing what nDPI holds in each state) and the module. */
void ft_dpi_free(struct ft_dpi *d);
uint64_t ft_dpi_memory_bytes(const struct ft_dpi *d);
/* A new flow f: share the nDPI state of its conversation if one is under
 * detection, else copy the final label of its reverse flow r (may be NULL),
 * else take a state from the pool. */
void ft_dpi_attach(struct ft_table *t, struct ft_flow *f, struct ft_flow *r);
/* One packet of a flow under detection (f->state & FLOW_DPI). */
void ft_dpi_inspect(struct ft_table *t, struct ft_flow *f, const struct ft_parsed *p,
                    uint64_t ts_ns);
/* f is about to be emitted: end its detection (giveup) if it is under
 * detection, then write its label into r. */
void ft_dpi_label(struct ft_table *t, struct ft_flow *f, struct ft_record *r);

#endif
