/*
 * tlv.c - flow records as nDPI TLV payloads for ntopng. See tlv.h for the
 * format and the contract.
 *
 * A record is written straight into the payload while the room left holds
 * the worst case of the field list; near the end of the buffer it goes to a
 * scratch area first and is copied only if it fits: a record is never cut.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ft_records.h"
#include "encode.h"
#include "enc_fields.h"
#include "tlv.h"
#include "text.h"

#define TLV_VERSION 1
#define TLV_FORMAT 1              /* ndpi_serialization_format_tlv */
#define TLV_END_OF_RECORD 1
#define TLV_U8 2
#define TLV_U16 3
#define TLV_U32 4
#define TLV_U64 5
#define TLV_STRING 11
#define TLV_MAX_STR 255           /* longest string a field may write */
/* type byte + u32 key + u16 length + string: the most one item takes */
#define TLV_MAX_ITEM (1 + 4 + 2 + TLV_MAX_STR)
#define TLV_MAX_FIELDS 64


static inline unsigned int_type(uint64_t v)
{
    return v <= 0xff ? TLV_U8 : v <= 0xffff ? TLV_U16 : v <= 0xffffffffu ? TLV_U32 : TLV_U64;
}

static inline uint8_t *put_be(uint8_t *p, uint64_t v, unsigned type)
{
    unsigned len = type == TLV_U8 ? 1 : type == TLV_U16 ? 2 : type == TLV_U32 ? 4 : 8;
    for (unsigned i = len; i > 0; i--) {
        p[i - 1] = (uint8_t)v;
        v >>= 8;
    }
    return p + len;
}

/* The type byte and the key of an item whose value has type `vtype`. */
static inline uint8_t *put_head(uint8_t *p, uint32_t key, unsigned vtype)
{
    unsigned ktype = int_type(key);
    *p++ = (uint8_t)(ktype << 4 | vtype);
    return put_be(p, key, ktype);
}

static inline uint8_t *put_uint_item(uint8_t *p, uint32_t key, uint64_t v)
{
    unsigned type = int_type(v);
    return put_be(put_head(p, key, type), v, type);
}

static inline uint8_t *put_str_item(uint8_t *p, uint32_t key, const char *s, size_t len)
{
    if (len > TLV_MAX_STR)
        len = TLV_MAX_STR;
    p = put_head(p, key, TLV_STRING);
    *p++ = (uint8_t)(len >> 8);
    *p++ = (uint8_t)len;
    memcpy(p, s, len);
    return p + len;
}

static uint8_t *put_addr(uint8_t *p, uint32_t key, const uint8_t *addr, int v6)
{
    char text[40];
    char *end = v6 ? put_ipv6(text, addr) : put_ipv4(text, addr);
    return put_str_item(p, key, text, (size_t)(end - text));
}

static uint8_t *put_mac_item(uint8_t *p, uint32_t key, const uint8_t *m)
{
    char text[17];
    put_mac(text, m);
    return put_str_item(p, key, text, sizeof text);
}

/* "master.app", e.g. "91.126": how ntopng (ParserInterface / ZMQParserInterface
 * parsePENNtopField, 5.2) reads L7_PROTO into its ndpi_protocol. */
static uint8_t *put_l7_item(uint8_t *p, uint32_t key, const struct ft_record *r)
{
    char text[12];
    char *end = put_u64(text, r->app_master);
    *end++ = '.';
    end = put_u64(end, r->app_id);
    return put_str_item(p, key, text, (size_t)(end - text));
}

static int layout_ok(const struct tlv_layout *lay)
{
    if (lay == NULL || (lay->fields == NULL && lay->nfields) || lay->nfields > TLV_MAX_FIELDS)
        return 0;
    for (uint32_t i = 0; i < lay->nfields; i++) {
        const struct tlv_field *f = &lay->fields[i];
        if (f->kind > TLV_K_L7_PROTO || f->field >= ENC_F_COUNT)
            return 0;
        if (f->kind == TLV_K_CONST_STR && lay->const_str == NULL)
            return 0;
    }
    return 1;
}

/* Writes one record into p (room for TLV_MAX_FIELDS * TLV_MAX_ITEM + 1 bytes). */
static uint8_t *put_record(uint8_t *p, const struct tlv_layout *lay, const struct ft_record *r)
{
    int v6 = r->ip_version == 6;
    for (uint32_t i = 0; i < lay->nfields; i++) {
        const struct tlv_field *f = &lay->fields[i];
        uint32_t key = v6 ? f->key6 : f->key4;
        uint64_t v;
        if (key == 0)
            continue;
        switch (f->kind) {
        case TLV_K_ADDR:
            p = put_addr(p, key, f->field == ENC_F_DST_ADDR4 || f->field == ENC_F_DST_ADDR6
                                     ? r->dst_addr : r->src_addr, v6);
            break;
        case TLV_K_MAC:
            if (r->has_mac)
                p = put_mac_item(p, key, f->field == ENC_F_DST_MAC ? r->dst_mac : r->src_mac);
            break;
        case TLV_K_EPOCH_S:
            p = put_uint_item(p, key, field_value(r, f->field, 0) / 1000u);
            break;
        case TLV_K_CONST_STR:
            p = put_str_item(p, key, lay->const_str, strlen(lay->const_str));
            break;
        case TLV_K_NONZERO:
            v = field_value(r, f->field, 0);
            if (v)
                p = put_uint_item(p, key, v);
            break;
        case TLV_K_L7_PROTO:
            if (r->app_source != FT_APP_NONE)
                p = put_l7_item(p, key, r);
            break;
        default:
            p = put_uint_item(p, key, field_value(r, f->field, 0));
            break;
        }
    }
    *p++ = TLV_END_OF_RECORD;
    return p;
}

int tlv_encode(const struct tlv_layout *lay, uintptr_t records, size_t n,
               uint8_t *buf, size_t cap, struct enc_result *res)
{
    if (!layout_ok(lay) || res == NULL || (buf == NULL && cap) || (records == 0 && n))
        return -EINVAL;
    memset(res, 0, sizeof *res);
    if (n == 0)
        return 0;
    uint8_t scratch[TLV_MAX_FIELDS * TLV_MAX_ITEM + 1];
    size_t worst = (size_t)lay->nfields * TLV_MAX_ITEM + 1;
    if (cap < 2 + 1)
        return -ENOSPC;
    const struct ft_record *rec = (const struct ft_record *)records;
    size_t used = 2, limit = lay->max_records ? lay->max_records : n;
    buf[0] = TLV_VERSION;
    buf[1] = TLV_FORMAT;
    size_t i = 0;
    for (; i < n && i < limit; i++) {
        if (cap - used >= worst) {
            used = (size_t)(put_record(buf + used, lay, &rec[i]) - buf);
            continue;
        }
        size_t len = (size_t)(put_record(scratch, lay, &rec[i]) - scratch);
        if (used + len > cap)
            break;
        memcpy(buf + used, scratch, len);
        used += len;
    }
    if (i == 0)
        return -ENOSPC;
    res->bytes = used;
    res->consumed = res->encoded = i;
    res->sets = 1;
    return 0;
}
