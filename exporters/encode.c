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

/* Writes one record at *pp and advances it; returns 1 if any field saturated. */
static int put_record(uint8_t **pp, const struct ft_record *r,
                      const struct enc_field *f, uint32_t nf, uint64_t boot_ms)
{
    uint8_t *p = *pp;
    int clamped = 0;
    for (uint32_t i = 0; i < nf; i++) {
        unsigned len = f[i].length;
        if (len == ENC_VARLEN) {        /* only ENC_F_APP_NAME (field_ok) */
            len = (unsigned)app_name_len(r);
            *p++ = (uint8_t)len;
            memcpy(p, r->app_name, len);
            p += len;
            continue;
        }
        switch (f[i].field) {
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
            clamped |= put_uint(p, field_value(r, f[i].field, boot_ms), len);
            break;
        }
        p += len;
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
int enc_encode(const struct enc_layout *lay, uintptr_t records, size_t n,
               uint8_t *buf, size_t cap, struct enc_result *res)
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
    for (i = 0; i < k; i++) {
        const struct ft_record *r = &recs[i];
        int v6 = r->ip_version == 6;
        if ((v6 ? lay->set_id6 : lay->set_id4) == 0)
            continue;
        if (v6)
            res->clamped += put_record(&p6, r, lay->fields6, lay->nfields6, lay->boot_ms);
        else
            res->clamped += put_record(&p4, r, lay->fields4, lay->nfields4, lay->boot_ms);
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

int enc_encode_msgs(const struct enc_layout *lay, struct enc_header *hdr,
                    uintptr_t records, size_t n, uint8_t *buf, size_t mtu,
                    uint32_t max_msgs, uint32_t *lens, uint32_t *nrecs,
                    struct enc_result *res)
{
    size_t hl = hdr ? enc_header_length(hdr->version) : 0;
    struct enc_result one;
    size_t done = 0, off = 0;
    uint32_t m = 0;

    if (res == NULL || hl == 0 || mtu <= hl || (max_msgs && (!buf || !lens || !nrecs)))
        return -EINVAL;
    memset(res, 0, sizeof(*res));
    while (done < n && m < max_msgs) {
        int rc = enc_encode(lay, records + done * sizeof(struct ft_record), n - done,
                            buf + off + hl, mtu - hl, &one);
        if (rc != 0)
            return rc;
        if (one.consumed == 0)
            break;                 /* a record larger than a message */
        done += one.consumed;
        res->skipped += one.skipped;
        res->clamped += one.clamped;
        res->sets += one.sets;
        if (one.encoded == 0)
            continue;              /* all skipped: no message */
        put_header(buf + off, hdr, hl + one.bytes, one.encoded);
        hdr->sequence += hdr->version == 9 ? 1 : one.encoded;
        lens[m] = (uint32_t)(hl + one.bytes);
        nrecs[m] = (uint32_t)one.encoded;
        off += hl + one.bytes;
        res->encoded += one.encoded;
        m++;
    }
    res->consumed = done;
    res->bytes = off;
    res->messages = m;
    return 0;
}
