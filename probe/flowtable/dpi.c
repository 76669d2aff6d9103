/*
 * dpi.c - application identification with nDPI 4.2: one detection module
 * per table, and a bounded pool of nDPI flow states, each shared by the two
 * opposite flows of a conversation while it is under detection.
 *
 * Ownership and lifetime
 *   - ft_dpi_new() (from ft_new(), only when dpi is on) allocates the module
 *     and reserves the pool, dpi_max_flows slots of struct dpi_slot, and a
 *     side array of one struct flow_app per flow slot (the flow entries stay
 *     112 bytes); both are touched only as they are first used. ft_dpi_free()
 *     (from ft_free()) releases all of it. Nothing here is allocated per
 *     packet; nDPI itself allocates small buffers inside a flow state (URLs,
 *     certificate names), released with ndpi_free_flow_data() when the state
 *     returns to the pool or the pool is freed.
 *   - A slot in use is held by the flows of one conversation, at most
 *     FT_DPI_OWNERS: owner[0] is the direction seen first, then its reverse
 *     once seen, then any flow of the conversation begun meanwhile (a ToS
 *     change mid-flow starts a new flow, ToS being part of the flow key)
 *     (flow index + 1, 0 = none); each owner has FLOW_DPI set and
 *     apps[its index].slot = slot index + 1.
 *     A slot returns to the pool only in finish(), which writes the label
 *     into every owner and clears their FLOW_DPI and .slot, so no flow ever
 *     points at a free slot.
 *   - apps[i] holds flow i's label (source, master, app ids) from its first
 *     packet (ft_dpi_attach) until the flow's slot is reused; the name is
 *     made from the ids when a record is written.
 *
 * When detection ends (finish), for both directions at once
 *   - nDPI names the application and wants no more packets
 *     (!ndpi_extra_dissection_possible): FT_APP_DETECTED;
 *   - FT_DPI_MAX_PACKETS packets of the conversation (both directions
 *     counted) went through nDPI: nDPI's label if it has one, else giveup;
 *   - an owner is emitted (idle or active timeout, TCP end, eviction, flush)
 *     while still under detection: giveup. The first direction to end decides
 *     for both, so the records of one conversation always carry the same
 *     label; the price is that a reverse outliving it is not inspected
 *     further.
 *   - giveup: ndpi_detection_giveup(guess on): FT_APP_GUESSED when nDPI says
 *     it guessed, FT_APP_DETECTED when it returns what the packets showed,
 *     FT_APP_UNKNOWN ("Unknown") when nothing.
 * What nDPI reads: each packet from its IP header on, as captured. A packet
 * cut by the capture's snap length (live capture keeps 256 bytes by
 * default) is handed over as a copy whose IP length says what was
 * captured: nDPI 4.2 would otherwise skip it whole. An HTTP Host in the
 * captured part is then found; a cut TLS ClientHello still is not (nDPI
 * reassembles the whole record before it reads the SNI).
 *
 * Finding the state of a conversation: states under detection are indexed
 * by the conversation's key, the flow key without ToS and with its two
 * endpoints in a canonical order, so the two directions meet even when
 * they carry different DSCP marks (servers often answer with another
 * class). Ifindex and VLAN stay in the key: directions seen on different
 * interfaces or VLANs are two conversations to nDPI. A flow that begins
 * while no state is under detection copies the final label of its reverse
 * flow (reverse_of(): same ToS first, else any) if that one is alive; a
 * reverse that found the pool empty
 * passes on FT_APP_NO_STATE. (A flow kept over an active timeout keeps its
 * own label, expire.c.)
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <ndpi_api.h>

#include "ft_table.h"

/* Packets of a conversation (both directions) given to nDPI at most: nDPI
 * classifies nearly everything within the first few packets (TCP handshake
 * + first payloads); ndpiReader stops UDP at 24 too (TCP at 80). */
#define FT_DPI_MAX_PACKETS 24

/* Flows that can share one state: the two directions, and one flow begun
 * by a ToS change while the conversation is under detection (one more takes
 * a second state, found only through its owners). Three keep the slot at
 * 768 bytes: packets and indexed are narrow to make room. */
#define FT_DPI_OWNERS 3

struct dpi_slot {
    struct ndpi_flow_struct nf;
    ndpi_protocol last;        /* what the last packet returned */
    struct ft_key conv;        /* the conversation's key (conv_key) */
    uint32_t owner[FT_DPI_OWNERS]; /* flow index + 1, 0 = none; owner[0] != 0 in use */
    uint32_t next;             /* free list, or index chain: slot index + 1, 0 = end */
    uint16_t packets;          /* packets of the conversation inspected */
    uint8_t indexed;           /* 1: in the conversation index */
};

_Static_assert(FT_DPI_MAX_PACKETS <= UINT16_MAX, "dpi_slot.packets is 16 bits");

/* Per flow slot of the table (indexed like t->flows). */
struct flow_app {
    uint32_t slot;             /* nDPI state under detection: index + 1, or 0 */
    uint16_t master;           /* the label once source is final */
    uint16_t app;
    uint8_t source;            /* enum ft_app_source */
    uint8_t pad[3];
};

/* The longest datagram nDPI takes (its packet length is 16 bits). */
#define FT_DPI_MAX_L3 0xffffu

struct ft_dpi {
    struct ndpi_detection_module_struct *mod;
    uint8_t *scratch;          /* FT_DPI_MAX_L3 bytes: truncated datagrams, relabelled */
    struct dpi_slot *slots;
    struct flow_app *apps;
    uint32_t *conv_buckets;    /* conversation index: slot index + 1, 0 = none */
    uint32_t conv_mask;
    uint32_t nslots;
    uint32_t napps;
    uint32_t fresh;            /* slots [fresh, nslots) never used */
    uint32_t free_head;        /* slot index + 1, 0 = none */
};

uint32_t ft_dpi_slot_size(void) { return (uint32_t)sizeof(struct dpi_slot); }

static void *map(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

struct ft_dpi *ft_dpi_new(uint32_t slots, uint32_t max_flows, int *err)
{
    *err = -EINVAL;
    if (slots == 0)
        return NULL;
    *err = -ENOSYS;
    if (ndpi_detection_get_sizeof_ndpi_flow_struct() != sizeof(struct ndpi_flow_struct))
        return NULL;
    *err = -ENOMEM;
    struct ft_dpi *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->nslots = slots;
    d->napps = max_flows;
    uint32_t nb = 1024;
    while (nb < slots)
        nb <<= 1;
    d->conv_mask = nb - 1;
    /* calloc, not mmap: the slots hold nDPI's heap pointers, and
     * LeakSanitizer scans heap blocks but not anonymous mappings (glibc
     * maps a block this large itself, zeroed and touched as used). */
    d->slots = calloc(slots, sizeof(struct dpi_slot));
    d->apps = map((size_t)max_flows * sizeof(struct flow_app));
    d->conv_buckets = calloc(nb, sizeof(uint32_t));
    d->scratch = malloc(FT_DPI_MAX_L3);
    d->mod = d->slots && d->apps && d->conv_buckets && d->scratch
                 ? ndpi_init_detection_module(ndpi_no_prefs) : NULL;
    if (!d->slots || !d->apps || !d->conv_buckets || !d->scratch || !d->mod) {
        ft_dpi_free(d);
        return NULL;
    }
    NDPI_PROTOCOL_BITMASK all;
    NDPI_BITMASK_SET_ALL(all);
    ndpi_set_protocol_detection_bitmask2(d->mod, &all);
    ndpi_finalize_initialization(d->mod);
    *err = 0;
    return d;
}

/* Release what nDPI allocated inside a state. nDPI 4.2 frees the TLS
 * reassembly buffer only when the state's l4_proto, which each packet
 * overwrites with nDPI's own reading of it, says TCP: a last packet it read
 * otherwise (an IPv6 extension header it does not walk) would leak the
 * buffer. In a TCP conversation (by our parser) nDPI reads each packet as
 * TCP or stops at an extension header, never as UDP, so the union holds TCP
 * state only and l4_proto can be set back before the free. */
static void state_release(struct dpi_slot *s)
{
    if (s->conv.proto == IPPROTO_TCP)
        s->nf.l4_proto = IPPROTO_TCP;
    ndpi_free_flow_data(&s->nf);
}

void ft_dpi_free(struct ft_dpi *d)
{
    if (!d)
        return;
    if (d->slots) {
        for (uint32_t i = 0; i < d->fresh; i++)
            if (d->slots[i].owner[0])
                state_release(&d->slots[i]);
        free(d->slots);
    }
    if (d->apps)
        munmap(d->apps, (size_t)d->napps * sizeof(struct flow_app));
    free(d->conv_buckets);
    free(d->scratch);
    if (d->mod)
        ndpi_exit_detection_module(d->mod);
    free(d);
}

uint64_t ft_dpi_memory_bytes(const struct ft_dpi *d)
{
    return sizeof(*d) + (uint64_t)d->nslots * sizeof(struct dpi_slot) +
           (uint64_t)d->napps * sizeof(struct flow_app) +
           ((uint64_t)d->conv_mask + 1) * sizeof(uint32_t) + FT_DPI_MAX_L3;
}

/* ---- the conversation index ---------------------------------------------- */

/* The flow key without ToS, the lower (address, port) endpoint first. */
static void conv_key(const struct ft_key *k, struct ft_key *c)
{
    *c = *k;
    c->tos = 0;
    int cmp = memcmp(k->src, k->dst, 16);
    if (cmp > 0 || (cmp == 0 && k->sport > k->dport)) {
        memcpy(c->src, k->dst, 16);
        memcpy(c->dst, k->src, 16);
        c->sport = k->dport;
        c->dport = k->sport;
    }
}

static uint32_t *conv_bucket(struct ft_table *t, const struct ft_key *c)
{
    return &t->dpi->conv_buckets[key_hash(t, c) & t->dpi->conv_mask];
}

static struct dpi_slot *conv_find(struct ft_table *t, const struct ft_key *c)
{
    struct ft_dpi *d = t->dpi;
    for (uint32_t i = *conv_bucket(t, c); i; i = d->slots[i - 1].next)
        if (memcmp(&d->slots[i - 1].conv, c, sizeof(*c)) == 0)
            return &d->slots[i - 1];
    return NULL;
}

static void conv_unlink(struct ft_table *t, struct dpi_slot *s)
{
    struct ft_dpi *d = t->dpi;
    uint32_t id = (uint32_t)(s - d->slots) + 1;
    uint32_t *pp = conv_bucket(t, &s->conv);
    while (*pp != id)
        pp = &d->slots[*pp - 1].next;
    *pp = s->next;
    s->indexed = 0;
}

/* ---- the pool ------------------------------------------------------------ */


/* A state for conversation c, in the index when `index` (else a second
 * state of an indexed conversation, found only through its owners). */
static struct dpi_slot *slot_take(struct ft_table *t, const struct ft_key *c, int index)
{
    struct ft_dpi *d = t->dpi;
    uint32_t i;
    if (d->free_head) {
        i = d->free_head - 1;
        d->free_head = d->slots[i].next;
    } else if (d->fresh < d->nslots) {
        i = d->fresh++;
    } else {
        return NULL;
    }
    struct dpi_slot *s = &d->slots[i];
    memset(s, 0, sizeof(*s));
    s->conv = *c;
    if (index) {
        uint32_t *b = conv_bucket(t, c);
        s->next = *b;
        *b = i + 1;
        s->indexed = 1;
    }
    t->st.dpi_inspected++;
    if (++t->st.dpi_pool_in_use > t->st.dpi_pool_peak)
        t->st.dpi_pool_peak = t->st.dpi_pool_in_use;
    return s;
}

/* End detection: the label goes into every owner, the state to the pool. */
static void finish(struct ft_table *t, struct dpi_slot *s, ndpi_protocol pr, int source)
{
    struct ft_dpi *d = t->dpi;
    for (int k = 0; k < FT_DPI_OWNERS; k++) {
        if (!s->owner[k])
            continue;
        uint32_t i = s->owner[k] - 1;
        struct flow_app *a = &d->apps[i];
        t->flows[i].state &= (uint8_t)~FLOW_DPI;
        a->slot = 0;
        a->source = (uint8_t)source;
        a->master = pr.master_protocol;
        a->app = pr.app_protocol;
        s->owner[k] = 0;
    }
    if (source == FT_APP_DETECTED)
        t->st.dpi_detected++;
    else if (source == FT_APP_GUESSED)
        t->st.dpi_guessed++;
    else
        t->st.dpi_unknown++;
    state_release(s);
    if (s->indexed)
        conv_unlink(t, s);
    s->next = d->free_head;
    d->free_head = (uint32_t)(s - d->slots) + 1;
    t->st.dpi_pool_in_use--;
}

static void give_up(struct ft_table *t, struct dpi_slot *s)
{
    ndpi_protocol pr = s->last;
    uint8_t guessed = 0;
    if (pr.app_protocol == NDPI_PROTOCOL_UNKNOWN)
        pr = ndpi_detection_giveup(t->dpi->mod, &s->nf, 1, &guessed);
    int source = FT_APP_DETECTED;
    if (pr.app_protocol == NDPI_PROTOCOL_UNKNOWN && pr.master_protocol == NDPI_PROTOCOL_UNKNOWN)
        source = FT_APP_UNKNOWN;
    else if (guessed)
        source = FT_APP_GUESSED;
    finish(t, s, pr, source);
}

/* ---- the flow table's hooks ---------------------------------------------- */

void ft_dpi_attach(struct ft_table *t, struct ft_flow *f, struct ft_flow *r)
{
    struct ft_dpi *d = t->dpi;
    uint32_t id = (uint32_t)(f - t->flows);
    struct flow_app *a = &d->apps[id];
    *a = (struct flow_app){ .source = FT_APP_NONE };
    struct ft_key c;
    conv_key(&f->key, &c);
    struct dpi_slot *s = conv_find(t, &c);
    if (s) {
        /* The conversation is under detection: share its state, if an
         * owner place is free (owners leave only all at once, in finish()):
         * the reverse direction, or a flow begun by a ToS change (a TLS
         * conversation of the corpus's netflix.pcap moves from DSCP 0 to 32
         * before nDPI has seen the certificate). */
        for (int k = 1; k < FT_DPI_OWNERS; k++) {
            if (!s->owner[k]) {
                s->owner[k] = id + 1;
                a->slot = (uint32_t)(s - d->slots) + 1;
                f->state |= FLOW_DPI;
                return;
            }
        }
    } else if (r && !(r->state & FLOW_DPI)) {
        const struct flow_app *ra = &d->apps[r - t->flows];
        if (ra->source != FT_APP_NONE) {
            a->source = ra->source; /* final: copy it */
            a->master = ra->master;
            a->app = ra->app;
            return;
        }
    }
    s = slot_take(t, &c, s == NULL);
    if (!s) {
        a->source = FT_APP_NO_STATE;
        t->st.dpi_no_state++;
        return;
    }
    s->owner[0] = id + 1;
    a->slot = (uint32_t)(s - d->slots) + 1;
    f->state |= FLOW_DPI;
}

void ft_dpi_inspect(struct ft_table *t, struct ft_flow *f, const struct ft_parsed *p,
                    uint64_t ts_ns)
{
    /* Non-first fragments (nDPI skips them) and packets whose transport
     * header our parser did not reach (an IPv6 extension chain longer than
     * it walks, cut short: nDPI might read another protocol there) are not
     * given to nDPI: every packet of a state is read as the same L4. */
    if (p->fragment || p->l4_partial)
        return;
    struct ft_dpi *d = t->dpi;
    struct dpi_slot *s = &d->slots[d->apps[f - t->flows].slot - 1];
    const uint8_t *l3 = p->l3;
    uint32_t len = p->l3_len;
    if (len < p->octets || len > FT_DPI_MAX_L3) {
        /* Cut by the snap length (or a TSO super-frame): nDPI 4.2 ignores
         * a datagram shorter than its IP length, so it gets a copy that
         * says it is as long as what was captured. */
        len = len > FT_DPI_MAX_L3 ? FT_DPI_MAX_L3 : len;
        memcpy(d->scratch, p->l3, len);
        if (f->key.ipver == 4) {
            d->scratch[2] = (uint8_t)(len >> 8);
            d->scratch[3] = (uint8_t)len;
        } else {
            d->scratch[4] = (uint8_t)((len - 40) >> 8);
            d->scratch[5] = (uint8_t)(len - 40);
        }
        l3 = d->scratch;
    }
    s->last = ndpi_detection_process_packet(d->mod, &s->nf, l3, (unsigned short)len,
                                            ts_ns / 1000000);
    s->packets++;
    t->st.dpi_packets++;
    if (s->last.app_protocol != NDPI_PROTOCOL_UNKNOWN) {
        /* Classified; nDPI may still want a certificate or the like. */
        if (s->packets >= FT_DPI_MAX_PACKETS || !ndpi_extra_dissection_possible(d->mod, &s->nf))
            finish(t, s, s->last, FT_APP_DETECTED);
    } else if (s->packets >= FT_DPI_MAX_PACKETS) {
        give_up(t, s);
    }
}

void ft_dpi_label(struct ft_table *t, struct ft_flow *f, struct ft_record *r)
{
    struct ft_dpi *d = t->dpi;
    const struct flow_app *a = &d->apps[f - t->flows];
    if (f->state & FLOW_DPI)
        give_up(t, &d->slots[a->slot - 1]);
    r->app_source = a->source;
    r->app_master = a->master;
    r->app_id = a->app;
    r->app_name[0] = '\0';
    if (a->source == FT_APP_DETECTED || a->source == FT_APP_GUESSED ||
        a->source == FT_APP_UNKNOWN) {
        ndpi_protocol pr = { .master_protocol = a->master, .app_protocol = a->app };
        ndpi_protocol2name(d->mod, pr, r->app_name, sizeof(r->app_name));
    }
}
