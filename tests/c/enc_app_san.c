/*
 * enc_app_san.c - the exporters' C (encode.c, jsonl.c, tlv.c) on records
 * with hostile application fields, under ASan+UBSan: labels of any bytes,
 * with and without a NUL in app_name's 47 bytes, any ids and sources.
 *
 * IPFIX layouts with the variable-length label and v9 layouts with the
 * fixed one are encoded into buffers of every size from one record's worth
 * up; each data set is walked back record by record (as a collector does)
 * and must hold exactly the records the encoder says it wrote. Every JSON
 * line goes into a malloc'd buffer of exactly JSONL_LINE_MAX bytes (ASan
 * sees any overrun). Prints "ok <sets> <lines>" and exits 0, or says what
 * failed and exits 1. Built and run by tests/test_export_application.py.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ft_records.h"
#include "encode.h"
#include "jsonl.h"
#include "tlv.h"

#define N 512

static uint32_t rng = 12345;

static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static void fill(struct ft_record *r, size_t i)
{
    memset(r, 0, sizeof *r);
    r->ip_version = i % 3 ? 4 : 6;
    r->src_addr[0] = 198;
    r->src_addr[3] = (uint8_t)i;
    r->packets = next();
    r->octets = next();
    r->app_master = (uint16_t)next();
    r->app_id = (uint16_t)next();
    r->app_source = (uint8_t)(next() % 6);  /* 5: no such source */
    for (size_t k = 0; k < sizeof r->app_name; k++)
        r->app_name[k] = (char)(next() % 256);
    switch (i % 4) {
    case 0:                                  /* no NUL anywhere */
        for (size_t k = 0; k < sizeof r->app_name; k++)
            if (!r->app_name[k])
                r->app_name[k] = 'x';
        break;
    case 1:                                  /* a NUL somewhere */
        r->app_name[next() % sizeof r->app_name] = 0;
        break;
    case 2:                                  /* empty */
        r->app_name[0] = 0;
        break;
    default:                                 /* a plain label */
        memcpy(r->app_name, "TLS.Google", 11);
    }
}

/* Records in a data set body of `fields`, walked as a collector does. */
static int walk(const uint8_t *p, size_t len, const struct enc_field *f, uint32_t nf,
                size_t align)
{
    size_t off = 0;
    int n = 0;
    uint32_t min = enc_record_length(f, nf);
    while (off + min <= len) {
        for (uint32_t i = 0; i < nf; i++)
            off += f[i].length == ENC_VARLEN ? 1u + p[off] : f[i].length;
        n++;
    }
    if (off > len || len - off >= align)     /* past the set, or more than padding */
        return -1;
    return n;
}

int main(void)
{
    static struct ft_record recs[N];
    for (size_t i = 0; i < N; i++)
        fill(&recs[i], i);
    const struct enc_field ipfix4[] = {
        {ENC_F_SRC_ADDR4, 4}, {ENC_F_PACKETS, 8}, {ENC_F_APP_NAME, ENC_VARLEN},
        {ENC_F_APP_ID, 2}};
    const struct enc_field ipfix6[] = {
        {ENC_F_SRC_ADDR6, 16}, {ENC_F_APP_NAME, ENC_VARLEN}, {ENC_F_APP_ID, 2},
        {ENC_F_APP_NAME, ENC_VARLEN}};
    const struct enc_field v9_4[] = {
        {ENC_F_SRC_ADDR4, 4}, {ENC_F_APP_NAME, 46}, {ENC_F_APP_MASTER, 2}};
    const struct enc_field v9_6[] = {
        {ENC_F_SRC_ADDR6, 16}, {ENC_F_APP_NAME, 46}, {ENC_F_APP_ID, 2}};
    const struct enc_layout lays[] = {
        {ipfix4, ipfix6, 4, 4, 256, 257, 1, 1, 0, 0},
        {v9_4, v9_6, 3, 3, 256, 257, 1, 4, 0, 0},
    };
    long sets = 0, lines = 0;

    for (size_t l = 0; l < 2; l++) {
        const struct enc_layout *lay = &lays[l];
        for (size_t cap = 200; cap <= 1500; cap += 97) {
            uint8_t *buf = malloc(cap);
            size_t done = 0;
            while (done < N) {
                struct enc_result res;
                if (enc_encode(lay, (uintptr_t)(recs + done), N - done, buf, cap, &res)) {
                    printf("enc_encode refused layout %zu\n", l);
                    return 1;
                }
                if (res.consumed == 0 || res.bytes > cap) {
                    printf("layout %zu cap %zu: consumed %lu bytes %lu\n", l, cap,
                           (unsigned long)res.consumed, (unsigned long)res.bytes);
                    return 1;
                }
                size_t off = 0;
                long seen = 0;
                while (off + 4 <= res.bytes) {
                    unsigned id = (unsigned)buf[off] << 8 | buf[off + 1];
                    size_t len = (size_t)buf[off + 2] << 8 | buf[off + 3];
                    if (len < 4 || off + len > res.bytes) {
                        printf("layout %zu cap %zu: set length %zu\n", l, cap, len);
                        return 1;
                    }
                    int n = id == 256 ? walk(buf + off + 4, len - 4, lay->fields4,
                                             lay->nfields4, lay->set_align)
                                      : walk(buf + off + 4, len - 4, lay->fields6,
                                             lay->nfields6, lay->set_align);
                    if (n < 0) {
                        printf("layout %zu cap %zu: bad set %u\n", l, cap, id);
                        return 1;
                    }
                    seen += n;
                    off += len;
                    sets++;
                }
                if (seen != (long)res.encoded || off != res.bytes) {
                    printf("layout %zu cap %zu: %ld records walked, %lu encoded\n", l, cap,
                           seen, (unsigned long)res.encoded);
                    return 1;
                }
                done += res.consumed;
            }
            free(buf);
        }
    }
    char *line = malloc(JSONL_LINE_MAX);
    for (size_t i = 0; i < N; i++) {
        size_t n = jsonl_format((uintptr_t)&recs[i], line);
        if (n >= JSONL_LINE_MAX || line[n - 1] != '\n') {
            printf("json line %zu: %zu bytes\n", i, n);
            return 1;
        }
        lines++;
    }
    free(line);
    const struct tlv_field tf[] = {{57590, 57590, ENC_F_ZERO, TLV_K_L7_PROTO}};
    const struct tlv_layout tl = {tf, 1, 0, NULL};
    uint8_t *tb = malloc(1 << 16);
    struct enc_result res;
    if (tlv_encode(&tl, (uintptr_t)recs, N, tb, 1 << 16, &res) || res.encoded != N) {
        printf("tlv_encode failed\n");
        return 1;
    }
    free(tb);
    printf("ok %ld %ld\n", sets, lines);
    return 0;
}
