/*
 * fuzz_parse.c - libFuzzer target for the parser and the table behind it.
 * The first byte picks the link type; the rest is one packet, ingested
 * twice (as captured, and with the wire length larger than captured) into
 * a small table that is then flushed, so parse, hash, update, eviction and
 * expiry all run on hostile input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ft_records.h"
#include "flowtable.h"

static const int linktypes[] = {
    FT_LINK_ETHERNET, FT_LINK_LINUX_SLL, FT_LINK_LINUX_SLL2, FT_LINK_RAW,
    FT_LINK_IPV4, FT_LINK_IPV6, FT_LINK_NULL, FT_LINK_LOOP, 147 /* unknown */,
};

static struct ft_table *table;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!table) {
        struct ft_config cfg = {
            .max_flows = 64, .record_buffer = 256,
            .idle_timeout_ns = 1000000000ull, .active_timeout_ns = 5000000000ull,
            .tcp_end_grace_ns = 100000000ull, .ifindex = 1,
        };
        int err;
        table = ft_new(&cfg, &err);
        if (!table)
            abort();
    }
    int linktype = linktypes[data[0] % (sizeof(linktypes) / sizeof(linktypes[0]))];
    size_t len = size - 1;
    uint8_t *copy = malloc(len ? len : 1); /* exact size: ASan catches overreads */
    memcpy(copy, data + 1, len);
    static uint64_t now = 1000000000ull;
    struct ft_pkt pkts[2] = {
        { .data = copy, .caplen = (uint32_t)len, .wirelen = (uint32_t)len, .ts_ns = now },
        { .data = copy, .caplen = (uint32_t)len, .wirelen = (uint32_t)len + 1500,
          .ts_ns = now + 1, .vlan_tci = 100, .vlan_valid = 1 },
    };
    now += 50000000ull;
    size_t consumed;
    struct ft_record recs[64];
    ft_ingest(table, linktype, pkts, 2, &consumed);
    while (ft_expire(table, 0, recs, 64) == 64)
        ;
    free(copy);
    struct ft_stats st;
    ft_get_stats(table, &st);
    uint64_t skipped = 0;
    for (int i = 0; i < FT_SKIP_COUNT; i++)
        skipped += st.skipped[i];
    if (st.packets_seen != st.packets_accepted + skipped)
        abort();
    return 0;
}
