/*
 * ft_bench.c - the C path alone: a classic pcap file is loaded into memory
 * and described as struct ft_pkt batches up front, then only ft_ingest and
 * ft_expire are timed. Prints ns per packet and the table's figures as one
 * JSON line.   ft_bench FILE [max_flows] [batch] [dpi_max_flows]
 * dpi_max_flows > 0 turns application identification (nDPI) on with a pool
 * of that many flow states; 0 (the default) leaves it off.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ft_records.h"
#include "flowtable.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: ft_bench FILE [max_flows] [batch] [dpi_max_flows]\n");
        return 2;
    }
    uint32_t max_flows = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 1u << 20;
    size_t batch = argc > 3 ? strtoul(argv[3], NULL, 10) : 4096;
    uint32_t dpi_pool = argc > 4 ? (uint32_t)strtoul(argv[4], NULL, 10) : 0;
    int fd = open(argv[1], O_RDONLY);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0) {
        perror(argv[1]);
        return 2;
    }
    uint8_t *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    uint32_t magic;
    memcpy(&magic, m, 4);
    int nsec = magic == 0xa1b23c4d;
    uint32_t linktype;
    memcpy(&linktype, m + 20, 4);
    size_t cap = 1 << 20, n = 0, off = 24;
    struct ft_pkt *pkts = malloc(cap * sizeof(*pkts));
    while (off + 16 <= (size_t)sb.st_size) {
        uint32_t h[4];
        memcpy(h, m + off, 16);
        if (off + 16 + h[2] > (size_t)sb.st_size)
            break;
        if (n == cap)
            pkts = realloc(pkts, (cap *= 2) * sizeof(*pkts));
        pkts[n++] = (struct ft_pkt){ .data = m + off + 16, .caplen = h[2], .wirelen = h[3],
                                     .ts_ns = (uint64_t)h[0] * 1000000000ull + (nsec ? h[1] : h[1] * 1000ull) };
        off += 16 + h[2];
    }
    struct ft_config cfg = { .max_flows = max_flows, .record_buffer = 65536,
        .idle_timeout_ns = 30000000000ull, .active_timeout_ns = 120000000000ull,
        .tcp_end_grace_ns = 2000000000ull, .ifindex = 1,
        .dpi = dpi_pool ? 1 : 0, .dpi_max_flows = dpi_pool };
    int err;
    struct ft_table *t = ft_new(&cfg, &err);
    if (!t) {
        fprintf(stderr, "ft_new: error %d\n", err);
        return 2;
    }
    struct ft_record *recs = malloc(4096 * sizeof(*recs));
    double t0 = now_s();
    for (size_t i = 0; i < n; ) {
        size_t k = n - i < batch ? n - i : batch, done = 0, c;
        while (done < k) {
            ft_ingest(t, (int)linktype, pkts + i + done, k - done, &c);
            done += c;
            while (ft_expire(t, 0, recs, 4096) == 4096)
                ;
        }
        i += k;
    }
    double t1 = now_s();
    ft_flush(t);
    while (ft_expire(t, 0, recs, 4096) > 0)
        ;
    struct ft_stats st;
    ft_get_stats(t, &st);
    printf("{\"packets\": %zu, \"ns_per_packet\": %.1f, \"flows_created\": %llu, "
           "\"flows_peak\": %llu, \"entry_bytes\": %u, \"table_bytes\": %llu, "
           "\"dpi_slot_bytes\": %u, \"dpi_packets\": %llu, \"dpi_inspected\": %llu, "
           "\"dpi_detected\": %llu, \"dpi_no_state\": %llu, \"dpi_pool_peak\": %llu}\n",
           n, (t1 - t0) * 1e9 / (double)n, (unsigned long long)st.flows_created,
           (unsigned long long)st.flows_peak, ft_flow_entry_size(),
           (unsigned long long)ft_memory_bytes(t), ft_dpi_slot_size(),
           (unsigned long long)st.dpi_packets, (unsigned long long)st.dpi_inspected,
           (unsigned long long)st.dpi_detected, (unsigned long long)st.dpi_no_state,
           (unsigned long long)st.dpi_pool_peak);
    ft_free(t);
    return 0;
}
