/*
 * fuzz_parse.c - libFuzzer target for the parser and the table behind it.
 * The first byte picks the link type; the rest is one packet, ingested
 * twice (as captured, and with the wire length larger than captured) into
 * a small table that is then flushed, so parse, hash, update, eviction and
 * expiry all run on hostile input. Application identification is on with a
 * pool smaller than the table: every accepted packet of a flow under
 * detection goes through nDPI (hostile payloads), flows share a state with
 * their reverse (over Ethernet, a third copy goes back with addresses and
 * ports swapped), and the pool runs empty. Every state taken must be in use
 * or have ended one way, and the pool must never hold more than its size.
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

/* The table lives across inputs; free it at exit, before LeakSanitizer
 * looks: nDPI's buffers (TLS reassembly, URLs) of the flows still under
 * detection are referenced only from the pool of states, which is mmap'd
 * memory that LeakSanitizer does not scan, so it would report them leaked. */
static void free_table(void)
{
    ft_free(table);
    table = NULL;
}

static void swap(uint8_t *a, uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t x = a[i];
        a[i] = b[i];
        b[i] = x;
    }
}

/* Ethernet + IPv4/IPv6 + ports: swap the addresses and the ports in place.
 * Returns 0 when the frame is not such a packet. */
static int reverse_frame(uint8_t *f, size_t len)
{
    if (len < 14 + 1)
        return 0;
    uint8_t *ip = f + 14;
    if ((ip[0] >> 4) == 4) {
        size_t ihl = (size_t)(ip[0] & 0x0f) * 4;
        if (ihl < 20 || len < 14 + ihl + 4)
            return 0;
        swap(ip + 12, ip + 16, 4);
        swap(ip + ihl, ip + ihl + 2, 2);
        return 1;
    }
    if ((ip[0] >> 4) == 6 && len >= 14 + 40 + 4) {
        swap(ip + 8, ip + 24, 16);
        swap(ip + 40, ip + 42, 2);
        return 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!table) {
        struct ft_config cfg = {
            .max_flows = 64, .record_buffer = 256,
            .idle_timeout_ns = 1000000000ull, .active_timeout_ns = 5000000000ull,
            .tcp_end_grace_ns = 100000000ull, .ifindex = 1,
            .dpi = 1, .dpi_max_flows = 16,
        };
        int err;
        table = ft_new(&cfg, &err);
        if (!table)
            abort();
        atexit(free_table);
    }
    int linktype = linktypes[data[0] % (sizeof(linktypes) / sizeof(linktypes[0]))];
    size_t len = size - 1;
    uint8_t *copy = malloc(len ? len : 1); /* exact size: ASan catches overreads */
    uint8_t *back = malloc(len ? len : 1);
    memcpy(copy, data + 1, len);
    memcpy(back, data + 1, len);
    size_t npkts = linktype == FT_LINK_ETHERNET && reverse_frame(back, len) ? 3 : 2;
    static uint64_t now = 1000000000ull;
    struct ft_pkt pkts[3] = {
        { .data = copy, .caplen = (uint32_t)len, .wirelen = (uint32_t)len, .ts_ns = now },
        { .data = copy, .caplen = (uint32_t)len, .wirelen = (uint32_t)len + 1500,
          .ts_ns = now + 1, .vlan_tci = 100, .vlan_valid = 1 },
        { .data = back, .caplen = (uint32_t)len, .wirelen = (uint32_t)len, .ts_ns = now + 2 },
    };
    now += 50000000ull;
    size_t consumed;
    struct ft_record recs[64];
    ft_ingest(table, linktype, pkts, npkts, &consumed);
    while (ft_expire(table, 0, recs, 64) == 64)
        ;
    free(copy);
    free(back);
    struct ft_stats st;
    ft_get_stats(table, &st);
    uint64_t skipped = 0;
    for (int i = 0; i < FT_SKIP_COUNT; i++)
        skipped += st.skipped[i];
    if (st.packets_seen != st.packets_accepted + skipped)
        abort();
    if (st.dpi_inspected != st.dpi_detected + st.dpi_guessed + st.dpi_unknown + st.dpi_pool_in_use ||
        st.dpi_pool_in_use > 16)
        abort();
    return 0;
}
