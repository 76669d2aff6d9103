/*
 * encode.c - template-driven NetFlow v5/v9 and IPFIX data-record encoder.
 * See encode.h for the contract.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ft_records.h"
#include "encode.h"
#include "enc_fields.h"

/* ENC_F_APP_NAME copies at most this many bytes: the label without its NUL */
#define APP_NAME_MAX (sizeof(((struct ft_record *)0)->app_name) - 1)
_Static_assert(APP_NAME_MAX == 46, "ft_record.app_name changed: update templates.py APP_NAME_LEN");

/* Field lengths each source allows: addresses and MACs are fixed, numbers
 * may be reduced-size (1..8 bytes). */
static int field_ok(const struct enc_field *f)
{
    switch (f->field) {
    case ENC_F_ZERO:
        return f->length >= 1 && f->length <= 64;
    case ENC_F_SRC_ADDR4:
    case ENC_F_DST_ADDR4:
        return f->length == 4;
    case ENC_F_SRC_ADDR6:
    case ENC_F_DST_ADDR6:
        return f->length == 16;
    case ENC_F_SRC_MAC:
    case ENC_F_DST_MAC:
        return f->length == 6;
    case ENC_F_APP_NAME:
        return (f->length >= 1 && f->length <= APP_NAME_MAX) || f->length == ENC_VARLEN;
    default:
        return f->field < ENC_F_COUNT && f->length >= 1 && f->length <= 8;
    }
}

uint32_t enc_record_length(const struct enc_field *fields, uint32_t n)
{
    uint32_t len = 0;
    for (uint32_t i = 0; i < n; i++)
        len += fields[i].length == ENC_VARLEN ? 1 : fields[i].length;
    return len;
}

/* The label's length in a variable-length field (RFC 7011 section 7: one
 * length byte for 0..254; APP_NAME_MAX is below 255). */
static inline size_t app_name_len(const struct ft_record *r)
{
    return strnlen(r->app_name, APP_NAME_MAX);
}

/* Bytes record r takes: the fixed length plus its variable-length values. */
static inline size_t record_bytes(const struct ft_record *r, size_t fixed, uint32_t nvar)
{
    return fixed + (nvar ? nvar * app_name_len(r) : 0);
}

static uint32_t varlen_fields(const struct enc_field *fields, uint32_t n)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++)
        k += fields[i].length == ENC_VARLEN;
    return k;
}

/* Big-endian store of v in len bytes, saturating; returns 1 if clamped.
 * The usual lengths are one byte-swapped store each (a record is ~20 of
 * these: the byte loop was a third of the encoder's time). */
static inline int put_uint(uint8_t *p, uint64_t v, unsigned len)
{
    int clamped = 0;
    if (len < 8) {
        uint64_t max = (UINT64_C(1) << (8 * len)) - 1;
        if (v > max) {
            v = max;
            clamped = 1;
        }
    }
    switch (len) {
    case 1:
        p[0] = (uint8_t)v;
        break;
    case 2: {
        uint16_t b = __builtin_bswap16((uint16_t)v);
        memcpy(p, &b, 2);
        break;
    }
    case 4: {
        uint32_t b = __builtin_bswap32((uint32_t)v);
        memcpy(p, &b, 4);
        break;
    }
    case 8: {
        uint64_t b = __builtin_bswap64(v);
        memcpy(p, &b, 8);
        break;
    }
    default:
        for (unsigned i = len; i > 0; i--) {
            p[i - 1] = (uint8_t)v;
            v >>= 8;
        }
    }
    return clamped;
}

/* Writes one field of r at p; returns the end. *clamped set on saturation. */
static uint8_t *put_field(uint8_t *p, const struct ft_record *r,
                          const struct enc_field *f, uint64_t boot_ms, int *clamped)
{
    unsigned len = f->length;
    if (len == ENC_VARLEN) {            /* only ENC_F_APP_NAME (field_ok) */
        len = (unsigned)app_name_len(r);
        *p++ = (uint8_t)len;
        memcpy(p, r->app_name, len);
        return p + len;
    }
    switch (f->field) {
    case ENC_F_ZERO:
        memset(p, 0, len);
        break;
    case ENC_F_SRC_ADDR4:
    case ENC_F_SRC_ADDR6:
        memcpy(p, r->src_addr, len);
        break;
    case ENC_F_DST_ADDR4:
    case ENC_F_DST_ADDR6:
        memcpy(p, r->dst_addr, len);
        break;
    case ENC_F_SRC_MAC:
        if (r->has_mac)
            memcpy(p, r->src_mac, 6);
        else
            memset(p, 0, 6);
        break;
    case ENC_F_DST_MAC:
        if (r->has_mac)
            memcpy(p, r->dst_mac, 6);
        else
            memset(p, 0, 6);
        break;
    case ENC_F_APP_NAME: {
        /* the label up to its NUL (or the field's end), then NULs */
        size_t n = strnlen(r->app_name, len);
        memcpy(p, r->app_name, n);
        memset(p + n, 0, len - n);
        break;
    }
    default:
        *clamped |= put_uint(p, field_value(r, f->field, boot_ms), len);
        break;
    }
    return p + len;
}

/*
 * A field as the record loop runs it. Most fields are an integer member of
 * struct ft_record taken as it is (OP_NUM: one 8-byte load, a mask, a
 * saturation test, a byte swap, one store); the others go through
 * put_field(). The ops are made once per enc_encode() call: put_field()'s
 * switch is an indirect jump per field, mispredicted often enough to be
 * most of the encoder's time.
 */
enum { OP_FIELD = 0, OP_NUM = 1 };
#define ENC_OPS_MAX 64                 /* longer field lists: put_field() each */

struct enc_op {
    uint8_t kind;
    uint8_t len;                       /* bytes on the wire */
    uint8_t wide;                      /* OP_NUM: an 8-byte store is safe (what
                                        * follows in the record overwrites it) */
    uint8_t shift;                     /* OP_NUM: 64 - 8 * len */
    uint16_t off;                      /* OP_NUM: offset in struct ft_record */
    uint64_t mask;                     /* OP_NUM: the member's width */
    uint64_t max;                      /* OP_NUM: the largest value len holds */
    const struct enc_field *f;         /* OP_FIELD */
};

/* The members OP_NUM reads with an 8-byte load: all before app_name, so
 * every such load stays inside the record. */
_Static_assert(offsetof(struct ft_record, app_id) + 8 <= sizeof(struct ft_record),
               "an 8-byte load at the last integer member stays in the record");

#define NUM_MEMBER(id, m) \
    case id: *off = offsetof(struct ft_record, m); \
             *size = sizeof(((struct ft_record *)0)->m); return 1

static int num_member(unsigned field, uint16_t *off, unsigned *size)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    switch (field) {
    NUM_MEMBER(ENC_F_SRC_PORT, src_port);
    NUM_MEMBER(ENC_F_DST_PORT, dst_port);
    NUM_MEMBER(ENC_F_PROTOCOL, protocol);
    NUM_MEMBER(ENC_F_TOS, tos);
    NUM_MEMBER(ENC_F_TCP_FLAGS, tcp_flags);
    NUM_MEMBER(ENC_F_PACKETS, packets);
    NUM_MEMBER(ENC_F_OCTETS, octets);
    NUM_MEMBER(ENC_F_IFINDEX, ifindex);
    NUM_MEMBER(ENC_F_VLAN, vlan);
    NUM_MEMBER(ENC_F_INNER_VLAN, inner_vlan);
    NUM_MEMBER(ENC_F_TTL_MIN, ttl_min);
    NUM_MEMBER(ENC_F_TTL_MAX, ttl_max);
    NUM_MEMBER(ENC_F_END_REASON, end_reason);
    NUM_MEMBER(ENC_F_IP_VERSION, ip_version);
    NUM_MEMBER(ENC_F_APP_MASTER, app_master);
    NUM_MEMBER(ENC_F_APP_ID, app_id);
    default:
        break;
    }
#else
    (void)field; (void)off; (void)size;    /* the load-and-mask needs little endian */
#endif
    return 0;
}

/* ops[0..nf) for a field list of at most ENC_OPS_MAX fields. */
static void make_ops(struct enc_op *ops, const struct enc_field *f, uint32_t nf)
{
    size_t after = 0;                  /* least bytes the fields after i take */
    for (uint32_t i = nf; i-- > 0;) {
        struct enc_op *o = &ops[i];
        unsigned size, len = f[i].length;
        memset(o, 0, sizeof(*o));
        o->f = &f[i];
        if (len != ENC_VARLEN && len >= 1 && len <= 8 && num_member(f[i].field, &o->off, &size)) {
            o->kind = OP_NUM;
            o->len = (uint8_t)len;
            o->shift = (uint8_t)(64 - 8 * len);
            o->mask = size == 8 ? UINT64_MAX : (UINT64_C(1) << (8 * size)) - 1;
            o->max = len == 8 ? UINT64_MAX : (UINT64_C(1) << (8 * len)) - 1;
            o->wide = len + after >= 8;
        }
        after += len == ENC_VARLEN ? 1 : len;
    }
}

/* Writes one record at *pp and advances it; returns 1 if any field saturated. */
static int put_record(uint8_t **pp, const struct ft_record *r, const struct enc_op *ops,
                      const struct enc_field *f, uint32_t nf, uint64_t boot_ms)
{
    uint8_t *p = *pp;
    int clamped = 0;
    if (ops == NULL) {
        for (uint32_t i = 0; i < nf; i++)
            p = put_field(p, r, &f[i], boot_ms, &clamped);
        *pp = p;
        return clamped;
    }
    for (uint32_t i = 0; i < nf; i++) {
        const struct enc_op *o = &ops[i];
        if (o->kind == OP_NUM) {
            uint64_t v;
            memcpy(&v, (const uint8_t *)r + o->off, 8);
            v &= o->mask;
            if (v > o->max) {
                v = o->max;
                clamped = 1;
            }
            uint64_t be = __builtin_bswap64(v << o->shift);
            if (o->wide)
                memcpy(p, &be, 8);
            else
                memcpy(p, &be, o->len);
            p += o->len;
        } else {
            p = put_field(p, r, o->f, boot_ms, &clamped);
        }
    }
    *pp = p;
    return clamped;
}

static int fields_ok(const struct enc_field *f, uint32_t n)
{
    if (n == 0)
        return 1;
    if (f == NULL)
        return 0;
    for (uint32_t i = 0; i < n; i++)
        if (!field_ok(&f[i]))
            return 0;
    return 1;
}

/* A set of `nrec` records taking `rbytes` bytes, with header and padding. */
static size_t set_bytes(size_t nrec, size_t rbytes, size_t hdr, size_t align)
{
    if (nrec == 0)
        return 0;
    size_t len = hdr + rbytes;
    return (len + align - 1) / align * align;
}

static void put_set_header(uint8_t *p, uint16_t set_id, size_t len)
{
    p[0] = (uint8_t)(set_id >> 8);
    p[1] = (uint8_t)set_id;
    p[2] = (uint8_t)(len >> 8);
    p[3] = (uint8_t)len;
}

/*
 * Two passes: the first decides how many records fit (at most one IPv4 and
 * one IPv6 set per call, whatever the mix), the second writes them, IPv4
 * set first, each set in input order.
 */
/* enc_encode() on the records of one IP version (`only` 4 or 6; the others
 * are passed over), or on all (`only` 0). */
static int encode_sets(const struct enc_layout *lay, uintptr_t records, size_t n,
                       uint8_t *buf, size_t cap, int only, struct enc_result *res)
{
    if (lay == NULL || res == NULL || (n > 0 && (records == 0 || buf == NULL)))
        return -EINVAL;
    if ((lay->set_id4 && !fields_ok(lay->fields4, lay->nfields4)) ||
        (lay->set_id6 && !fields_ok(lay->fields6, lay->nfields6)))
        return -EINVAL;
    size_t align = lay->set_align ? lay->set_align : 1;
    if (align != 1 && align != 4)
        return -EINVAL;
    if (!lay->set_hdr && lay->set_id6 && lay->set_id4)
        return -EINVAL;            /* without set headers: one version only */
    memset(res, 0, sizeof(*res));

    const struct ft_record *recs = (const struct ft_record *)records;
    size_t len4 = enc_record_length(lay->fields4, lay->nfields4);
    size_t len6 = enc_record_length(lay->fields6, lay->nfields6);
    uint32_t var4 = varlen_fields(lay->fields4, lay->nfields4);
    uint32_t var6 = varlen_fields(lay->fields6, lay->nfields6);
    size_t hdr = lay->set_hdr ? 4 : 0;
    size_t n4 = 0, n6 = 0, bytes4 = 0, bytes6 = 0, skipped = 0, i = 0;

    for (; i < n; i++) {
        int v6 = recs[i].ip_version == 6;
        if (only && only != (v6 ? 6 : 4))
            continue;
        if ((v6 ? lay->set_id6 : lay->set_id4) == 0) {
            skipped++;
            continue;
        }
        if (lay->max_records && n4 + n6 >= lay->max_records)
            break;
        size_t a = n4 + !v6, b = n6 + v6;
        size_t ba = bytes4 + (v6 ? 0 : record_bytes(&recs[i], len4, var4));
        size_t bb = bytes6 + (v6 ? record_bytes(&recs[i], len6, var6) : 0);
        if (set_bytes(a, ba, hdr, align) + set_bytes(b, bb, hdr, align) > cap)
            break;
        n4 = a;
        n6 = b;
        bytes4 = ba;
        bytes6 = bb;
    }
    size_t k = i;                  /* records consumed */

    uint8_t *p4 = buf + hdr;
    size_t off6 = set_bytes(n4, bytes4, hdr, align);
    uint8_t *p6 = buf + off6 + hdr;
    struct enc_op ops4[ENC_OPS_MAX], ops6[ENC_OPS_MAX];
    const struct enc_op *o4 = NULL, *o6 = NULL;
    if (n4 && lay->nfields4 <= ENC_OPS_MAX) {
        make_ops(ops4, lay->fields4, lay->nfields4);
        o4 = ops4;
    }
    if (n6 && lay->nfields6 <= ENC_OPS_MAX) {
        make_ops(ops6, lay->fields6, lay->nfields6);
        o6 = ops6;
    }
    for (i = 0; i < k; i++) {
        const struct ft_record *r = &recs[i];
        int v6 = r->ip_version == 6;
        if ((v6 ? lay->set_id6 : lay->set_id4) == 0 || (only && only != (v6 ? 6 : 4)))
            continue;
        if (v6)
            res->clamped += put_record(&p6, r, o6, lay->fields6, lay->nfields6, lay->boot_ms);
        else
            res->clamped += put_record(&p4, r, o4, lay->fields4, lay->nfields4, lay->boot_ms);
    }
    size_t total = off6 + set_bytes(n6, bytes6, hdr, align);
    if (hdr) {
        if (n4) {
            memset(p4, 0, (size_t)(buf + off6 - p4));
            put_set_header(buf, lay->set_id4, off6);
            res->sets++;
        }
        if (n6) {
            memset(p6, 0, (size_t)(buf + total - p6));
            put_set_header(buf + off6, lay->set_id6, total - off6);
            res->sets++;
        }
    }
    res->consumed = k;
    res->encoded = n4 + n6;
    res->skipped = skipped;
    res->bytes = total;
    return 0;
}

int enc_encode(const struct enc_layout *lay, uintptr_t records, size_t n,
               uint8_t *buf, size_t cap, struct enc_result *res)
{
    return encode_sets(lay, records, n, buf, cap, 0, res);
}

void enc_time_span(uintptr_t records, size_t n, uint64_t *min_first_ms,
                   uint64_t *max_last_ms)
{
    const struct ft_record *recs = (const struct ft_record *)records;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (size_t i = 0; i < n; i++) {
        if (recs[i].first_ns < lo)
            lo = recs[i].first_ns;
        if (recs[i].last_ns > hi)
            hi = recs[i].last_ns;
    }
    *min_first_ms = n ? lo / 1000000u : 0;
    *max_last_ms = n ? hi / 1000000u : 0;
}

/* ---- whole messages --------------------------------------------------- */

uint32_t enc_header_length(uint16_t version)
{
    switch (version) {
    case 5: return 24;
    case 9: return 20;
    case 10: return 16;
    default: return 0;
    }
}

static void put_be(uint8_t *p, uint64_t v, unsigned len)
{
    (void)put_uint(p, v, len);
}

/* The header of one message: `records` data records, `len` bytes. */
static void put_header(uint8_t *p, const struct enc_header *h, size_t len,
                       uint64_t records)
{
    switch (h->version) {
    case 10:
        put_be(p, 10, 2);
        put_be(p + 2, len, 2);
        put_be(p + 4, h->unix_secs, 4);
        put_be(p + 8, h->sequence & 0xffffffffu, 4);
        put_be(p + 12, h->domain_id, 4);
        break;
    case 9:
        put_be(p, 9, 2);
        put_be(p + 2, records, 2);
        put_be(p + 4, h->uptime_ms, 4);
        put_be(p + 8, h->unix_secs, 4);
        put_be(p + 12, h->sequence & 0xffffffffu, 4);
        put_be(p + 16, h->domain_id, 4);
        break;
    default:                       /* 5 */
        put_be(p, 5, 2);
        put_be(p + 2, records, 2);
        put_be(p + 4, h->uptime_ms, 4);
        put_be(p + 8, h->unix_secs, 4);
        put_be(p + 12, h->unix_nsecs, 4);
        put_be(p + 16, h->sequence & 0xffffffffu, 4);
        put_be(p + 20, h->engine, 2);
        put_be(p + 22, h->sampling, 2);
        break;
    }
}

/* Whether a template message follows the data message just counted (and
 * the count starts over): the refresh is due and the call has room. */
static int refresh_after(struct enc_refresh *rf, uint32_t *since, uint32_t m,
                         uint32_t max_msgs)
{
    if (rf == NULL)
        return 0;
    (*since)++;
    if (rf->body == NULL || rf->every == 0 || *since < rf->every || m >= max_msgs)
        return 0;
    *since = 0;
    return 1;
}

/* How many of records[0..n) go into at most max_msgs messages of one IP
 * version each, packed as encode_sets() packs them (greedily, in input
 * order, per version), with the template messages *rf puts between them;
 * *skipped: records of a version the layout leaves out, among them. */
static size_t plan_messages(const struct enc_layout *lay, const struct ft_record *recs,
                            size_t n, size_t cap, uint32_t max_msgs,
                            struct enc_refresh *rf, uint64_t *skipped)
{
    size_t fixed[2] = {enc_record_length(lay->fields4, lay->nfields4),
                       enc_record_length(lay->fields6, lay->nfields6)};
    uint32_t var[2] = {varlen_fields(lay->fields4, lay->nfields4),
                       varlen_fields(lay->fields6, lay->nfields6)};
    size_t hdr = lay->set_hdr ? 4 : 0, align = lay->set_align ? lay->set_align : 1;
    size_t cnt[2] = {0, 0}, fill[2] = {0, 0}, i;
    uint32_t m = 0, since = rf ? rf->since : 0;

    *skipped = 0;
    for (i = 0; i < n; i++) {
        int v = recs[i].ip_version == 6;
        if ((v ? lay->set_id6 : lay->set_id4) == 0) {
            (*skipped)++;
            continue;
        }
        size_t b = record_bytes(&recs[i], fixed[v], var[v]);
        if (cnt[v] && (!lay->max_records || cnt[v] < lay->max_records) &&
            set_bytes(cnt[v] + 1, fill[v] + b, hdr, align) <= cap) {
            cnt[v]++;
            fill[v] += b;
            continue;
        }
        if (m == max_msgs || set_bytes(1, b, hdr, align) > cap)
            break;                 /* no message left, or too large for one */
        m++;
        m += (uint32_t)refresh_after(rf, &since, m, max_msgs);
        cnt[v] = 1;
        fill[v] = b;
    }
    return i;
}

/* Messages of one IP version each, IPv4 ones first: runs of equal-sized
 * datagrams, which the UDP transport hands to the kernel as one send each
 * (udpsend.h). A mixed message's size would follow its mix. */
int enc_encode_msgs(const struct enc_layout *lay, struct enc_header *hdr,
                    uintptr_t records, size_t n, uint8_t *buf, size_t mtu,
                    uint32_t max_msgs, uint32_t *lens, uint32_t *nrecs,
                    struct enc_refresh *rf, struct enc_result *res)
{
    size_t hl = hdr ? enc_header_length(hdr->version) : 0;
    const struct ft_record *recs = (const struct ft_record *)records;
    struct enc_result one;
    size_t k, off = 0;
    uint32_t m = 0;

    if (res == NULL || hl == 0 || mtu <= hl || (max_msgs && (!buf || !lens || !nrecs)) ||
        lay == NULL || (n > 0 && records == 0) ||
        (rf && rf->body && hl + rf->body_len > mtu))
        return -EINVAL;
    memset(res, 0, sizeof(*res));
    if (rf)
        rf->sent = 0;
    k = plan_messages(lay, recs, n, mtu - hl, max_msgs, rf, &res->skipped);
    for (int only = 4; only <= 6; only += 2) {
        size_t pos = 0;
        if ((only == 4 ? lay->set_id4 : lay->set_id6) == 0)
            continue;
        while (pos < k && m < max_msgs) {
            int rc = encode_sets(lay, records + pos * sizeof(struct ft_record), k - pos,
                                 buf + off + hl, mtu - hl, only, &one);
            if (rc != 0)
                return rc;
            if (one.encoded == 0)
                break;             /* none of this version left */
            pos += one.consumed;
            res->clamped += one.clamped;
            res->sets += one.sets;
            put_header(buf + off, hdr, hl + one.bytes, one.encoded);
            hdr->sequence += hdr->version == 9 ? 1 : one.encoded;
            lens[m] = (uint32_t)(hl + one.bytes);
            nrecs[m] = (uint32_t)one.encoded;
            off += hl + one.bytes;
            res->encoded += one.encoded;
            m++;
            if (rf && refresh_after(rf, &rf->since, m, max_msgs)) {
                put_header(buf + off, hdr, hl + rf->body_len, rf->count);
                memcpy(buf + off + hl, rf->body, rf->body_len);
                hdr->sequence += hdr->version == 9 ? 1 : 0;
                lens[m] = (uint32_t)(hl + rf->body_len);
                nrecs[m] = 0;
                off += hl + rf->body_len;
                rf->sent++;
                m++;
            }
        }
    }
    res->consumed = k;
    res->bytes = off;
    res->messages = m;
    return 0;
}
