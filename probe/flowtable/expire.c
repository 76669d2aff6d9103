/*
 * expire.c - the timer wheel walk and what ends flows: records into the
 * pending ring (emit), expiry as the clock advances, eviction when the
 * table is full, the forced end of every flow (flush: a walk of the slab
 * in index order, then the chains and the wheel are reset at once), and
 * re-slotting on a timeout change. The layout and the wheel's insert/unlink:
 * ft_table.h.
 *
 * Expiry decisions are exact, whatever the wheel's granularity: a flow is
 * only ended when due_reason() says so at the current time; a flow found
 * early in its slot is re-inserted further on (lazy re-check).
 */
#include <errno.h>
#include <string.h>

#include "ft_table.h"

#define EVICT_RECHECKS 8

/* ---- records ---------------------------------------------------------- */

static void emit(struct ft_table *t, struct ft_flow *f, int reason)
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
    if (t->dpi) {
        ft_dpi_label(t, f, r); /* ends detection first if it is still on */
    } else {
        r->app_master = 0;
        r->app_id = 0;
        r->app_source = FT_APP_NONE;
        r->app_name[0] = '\0';
    }
    t->pending_count++;
    t->st.flows_expired[reason]++;
}

/* ---- flow end --------------------------------------------------------- */

/* Emit and free a flow: unlink from its hash chain and the wheel.
 *
 * With DPI on, a flow ended by the active timeout is emitted and kept,
 * emptied, in place: its key, its hash chain and its application label stay,
 * so the next record of a long conversation carries the same label without
 * inspecting it again. The empty flow takes its next packet as its first;
 * when it is due again without one (idle, eviction, flush) it is freed
 * without a record. */
void ft_expire_flow(struct ft_table *t, struct ft_flow *f, int reason)
{
    uint32_t id = (uint32_t)(f - t->flows);
    if (f->packets)
        emit(t, f, reason);
    if (reason == FT_END_ACTIVE && t->dpi && f->packets) {
        f->packets = f->octets = 0;
        f->tcp_flags = 0;
        /* Due again at the idle timeout after its last packet, or the
         * active timeout from now: never in the slot being processed. */
        f->first_ns = t->st.now_ns > f->last_ns ? t->st.now_ns : f->last_ns;
        wheel_unlink(t, id);
        wheel_insert(t, id);
        return;
    }
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

/* Table full: evict the flow with the earliest deadline (approximately:
 * the head of the earliest non-empty slot, after a few lazy re-checks). */
void ft_evict_one(struct ft_table *t)
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
        ft_expire_flow(t, f, FT_END_RESOURCES);
        return;
    }
}

/* ---- the clock -------------------------------------------------------- */

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
            ft_expire_flow(t, f, reason);
        }
        t->wheel_done = slot;
    }
    return 1;
}

/* ---- flush ------------------------------------------------------------ */

/* Forced end of every flow, while there is room for the records.
 *
 * Ending flows one by one through the wheel (ft_expire_flow) would cost
 * several cache misses each: wheel order is random in memory, and each
 * unlink rehashes the key, walks its chain and touches both wheel
 * neighbours. Every flow goes, so none needs unlinking: the slab is walked
 * in index order (the hardware prefetcher follows it), each used flow with
 * packets is emitted (a flow kept empty over an active timeout is dropped
 * without a record, as ft_expire_flow does), and once the cursor has passed
 * every flow the chains, the wheel, the free list and the slab's fill mark
 * are reset at once. Records come out in slab order, not deadline order.
 *
 * Until then the chains and the wheel still hold flows already emitted:
 * nothing may look a flow up or walk the wheel while t->flushing is set.
 * ft_ingest() finishes the flush first (ft_flush_some), ft_set_timeouts()
 * refuses (-EBUSY), ft_expire() does nothing else, and eviction happens only
 * inside ft_ingest(). DPI needs nothing more per flow: emit() ends a
 * detection still on (giveup, for every owner of the state) and a flow
 * without packets is never under detection; apps[] entries are rewritten by
 * ft_dpi_attach() when a slot is taken again.
 *
 * Returns 1 when every flow has been ended, 0 when the pending buffer is
 * full (call again after draining). */
int ft_flush_some(struct ft_table *t)
{
    uint32_t nb = t->bucket_mask + 1;
    /* The reset zeroes every chain head; a sparse table (max_flows much
     * larger than the flows it ever held) clears the heads of its flows
     * instead, not to fault in bucket pages it never touched. */
    int sparse = (uint64_t)t->fresh * 16 < nb;
    while (t->flush_next < t->fresh) {
        struct ft_flow *f = &t->flows[t->flush_next];
        if (f->state & FLOW_USED) {
            if (f->packets) {
                if (pending_free(t) == 0)
                    return 0;
                emit(t, f, FT_END_FORCED);
            }
            if (sparse)
                t->buckets[key_hash(t, &f->key) & t->bucket_mask] = 0;
            t->st.flows_active--; /* as it goes: held() stays exact mid-flush */
        }
        t->flush_next++;
    }
    if (!sparse)
        memset(t->buckets, 0, (size_t)nb * sizeof(uint32_t));
    for (uint32_t s = 0; s < WHEEL_SLOTS; s++)
        t->slot_prev[s] = t->slot_next[s] = t->cfg.max_flows + s;
    t->free_head = 0;
    t->fresh = 0; /* the slab is taken again from index 0, as after ft_new() */
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
        int caught_up = t->flushing ? ft_flush_some(t) : advance(t, t->st.now_ns);
        if (caught_up && !t->pending_count)
            break;
    }
    return n;
}

size_t ft_flush(struct ft_table *t)
{
    /* Called again mid-flush: carry on; a restart would emit again the
     * flows before the cursor, still in the slab. */
    if (!t->flushing) {
        t->flushing = 1;
        t->flush_next = 0;
    }
    return (size_t)t->st.flows_active;
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
