/*
 * expire.c - the timer wheel walk and what ends flows: records into the
 * pending ring (emit), expiry as the clock advances, eviction when the
 * table is full, the forced end of every flow (flush), and re-slotting on
 * a timeout change. The layout and the wheel's insert/unlink: ft_table.h.
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

/* Forced end of every flow, slot by slot, while there is room. */
static int flush_some(struct ft_table *t)
{
    while (t->flush_slot < WHEEL_SLOTS) {
        uint32_t head = t->cfg.max_flows + t->flush_slot;
        uint32_t id;
        while ((id = *node_next(t, head)) != head) {
            if (pending_free(t) == 0)
                return 0;
            ft_expire_flow(t, &t->flows[id], FT_END_FORCED);
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
