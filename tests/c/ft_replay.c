/*
 * ft_replay.c - replay capture files through the flow engine in pure C, for
 * the sanitizer builds (ASan + UBSan): every packet is ingested in batches
 * as the Python path does, every flow is expired, and conservation is
 * checked. Application identification (nDPI) is on unless -n: every nDPI
 * state must be back in the pool at the end, and each one inspected must
 * have ended one way (detected, guessed, unknown). Prints one line of
 * counters per file; exits 1 on a broken invariant, 2 on a file error.
 *
 * -f N starts a flush after every N batches and collects one record
 * buffer's worth only, so that the next batch meets an unfinished flush (the
 * flows it already emitted still in the chains and the wheel: ft_ingest()
 * must finish it first). -r sets the pending record buffer; a small one
 * leaves more of each flush unfinished.
 *
 *   ft_replay [-m max_flows] [-b batch] [-p dpi_pool] [-n] [-f N] [-r records] FILE...
 */
#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ft_records.h"
#include "flowtable.h"

#define ARENA_BYTES (1u << 22)

static int replay(const char *path, uint32_t max_flows, size_t batch, uint32_t dpi_pool,
                  unsigned flush_every, uint32_t record_buffer, uint32_t prefault)
{
    char errbuf[PCAP_ERRBUF_SIZE];
    pcap_t *pc = pcap_open_offline_with_tstamp_precision(path, PCAP_TSTAMP_PRECISION_NANO, errbuf);
    if (!pc) {
        fprintf(stderr, "%s: %s\n", path, errbuf);
        return 2;
    }
    struct ft_config cfg = {
        .max_flows = max_flows, .record_buffer = record_buffer,
        .idle_timeout_ns = 30000000000ull, .active_timeout_ns = 120000000000ull,
        .tcp_end_grace_ns = 2000000000ull, .ifindex = 1,
        .dpi = dpi_pool ? 1 : 0, .dpi_max_flows = dpi_pool, .prefault = prefault,
    };
    int err;
    struct ft_table *t = ft_new(&cfg, &err);
    struct ft_pkt *pkts = calloc(batch, sizeof(*pkts));
    struct ft_record *recs = calloc(1024, sizeof(*recs));
    uint8_t *arena = malloc(ARENA_BYTES);
    if (!t || !pkts || !recs || !arena) {
        fprintf(stderr, "out of memory\n");
        return 2;
    }
    uint64_t rec_pkts = 0, rec_octets = 0;
    int linktype = pcap_datalink(pc);
    int eof = 0;
    unsigned batches = 0;
    while (!eof) {
        size_t n = 0, used = 0;
        struct pcap_pkthdr *h;
        const u_char *data;
        while (n < batch) {
            int rc = pcap_next_ex(pc, &h, &data);
            if (rc != 1) {
                eof = 1;
                break;
            }
            if (used + h->caplen > ARENA_BYTES)
                break; /* this packet is lost to the harness: keep it simple */
            /* Copy into an exactly-sized heap block so ASan sees overreads. */
            uint8_t *copy = malloc(h->caplen ? h->caplen : 1);
            memcpy(copy, data, h->caplen);
            pkts[n] = (struct ft_pkt){ .data = copy, .caplen = h->caplen, .wirelen = h->len,
                                       .ts_ns = (uint64_t)h->ts.tv_sec * 1000000000ull + (uint64_t)h->ts.tv_usec };
            used += h->caplen;
            n++;
        }
        size_t done = 0, consumed;
        while (done < n) {
            ft_ingest(t, linktype, pkts + done, n - done, &consumed);
            done += consumed;
            size_t k;
            while ((k = ft_expire(t, 0, recs, 1024)) > 0)
                for (size_t i = 0; i < k; i++) {
                    rec_pkts += recs[i].packets;
                    rec_octets += recs[i].octets;
                }
        }
        for (size_t i = 0; i < n; i++)
            free((void *)pkts[i].data);
        if (flush_every && ++batches % flush_every == 0) {
            ft_flush(t);
            ft_flush(t); /* again mid-flush: carries the same flush on */
            /* One buffer's worth: the flush stops when the buffer is full,
             * and the empty buffer then lets the next batch in. */
            size_t k = ft_expire(t, 0, recs, record_buffer < 1024 ? record_buffer : 1024);
            for (size_t i = 0; i < k; i++) {
                rec_pkts += recs[i].packets;
                rec_octets += recs[i].octets;
            }
        }
    }
    ft_flush(t);
    size_t k;
    while ((k = ft_expire(t, 0, recs, 1024)) > 0)
        for (size_t i = 0; i < k; i++) {
            rec_pkts += recs[i].packets;
            rec_octets += recs[i].octets;
        }
    struct ft_stats st;
    ft_get_stats(t, &st);
    uint64_t skipped = 0;
    for (int i = 0; i < FT_SKIP_COUNT; i++)
        skipped += st.skipped[i];
    int ok = rec_pkts == st.packets_accepted && rec_octets == st.octets_accepted &&
             st.packets_seen == st.packets_accepted + skipped && st.flows_active == 0 &&
             st.dpi_pool_in_use == 0 &&
             st.dpi_inspected == st.dpi_detected + st.dpi_guessed + st.dpi_unknown;
    printf("%s linktype=%d seen=%llu accepted=%llu skipped=%llu emitted=%llu octets=%llu/%llu flows=%llu "
           "dpi_packets=%llu dpi_inspected=%llu detected=%llu guessed=%llu unknown=%llu no_state=%llu %s\n",
           path, linktype, (unsigned long long)st.packets_seen,
           (unsigned long long)st.packets_accepted, (unsigned long long)skipped,
           (unsigned long long)rec_pkts, (unsigned long long)rec_octets,
           (unsigned long long)st.octets_accepted, (unsigned long long)st.flows_created,
           (unsigned long long)st.dpi_packets, (unsigned long long)st.dpi_inspected,
           (unsigned long long)st.dpi_detected, (unsigned long long)st.dpi_guessed,
           (unsigned long long)st.dpi_unknown, (unsigned long long)st.dpi_no_state,
           ok ? "ok" : "BROKEN");
    ft_free(t);
    free(pkts);
    free(recs);
    free(arena);
    pcap_close(pc);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    uint32_t max_flows = 4096;
    size_t batch = 256;
    uint32_t dpi_pool = 1024;
    unsigned flush_every = 0;
    uint32_t record_buffer = 4096, prefault = 0;
    int opt, rc = 0;
    while ((opt = getopt(argc, argv, "m:b:p:nf:r:P")) != -1) {
        if (opt == 'm')
            max_flows = (uint32_t)strtoul(optarg, NULL, 10);
        else if (opt == 'b')
            batch = strtoul(optarg, NULL, 10);
        else if (opt == 'p')
            dpi_pool = (uint32_t)strtoul(optarg, NULL, 10);
        else if (opt == 'n')
            dpi_pool = 0;
        else if (opt == 'f')
            flush_every = (unsigned)strtoul(optarg, NULL, 10);
        else if (opt == 'r')
            record_buffer = (uint32_t)strtoul(optarg, NULL, 10);
        else if (opt == 'P')
            prefault = 1;      /* the slab mapped ahead by a helper thread */
        else
            return 2;
    }
    for (int i = optind; i < argc; i++) {
        int r = replay(argv[i], max_flows, batch, dpi_pool, flush_every, record_buffer,
                       prefault);
        if (r > rc)
            rc = r;
    }
    return rc;
}
