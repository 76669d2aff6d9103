/*
 * pf_bench.c - the capture-file reader alone: pf_open + pf_next_batch over
 * a whole file, nothing else. Prints ns per packet, the reader kind and the
 * process's peak RSS as one JSON line.   pf_bench FILE [batch]
 * Build: gcc -O2 -std=gnu11 -I include -I driver -o OUT bench/c/pf_bench.c
 *        driver/pcapfile.c driver/pcapfile_mmap.c driver/pcapfile_libpcap.c
 *        -lpcap
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include "ft_records.h"
#include "pcapfile.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: pf_bench FILE [batch]\n");
        return 2;
    }
    size_t batch = argc > 2 ? strtoul(argv[2], NULL, 10) : 4096;
    char errbuf[PF_ERRBUF_SIZE];
    int err;
    struct ft_pkt *pkts = calloc(batch, sizeof(*pkts));
    double t0 = now_s();
    struct pf_reader *r = pf_open(argv[1], 0, errbuf, &err);
    if (r == NULL) {
        fprintf(stderr, "%s\n", errbuf);
        return 2;
    }
    long n;
    uint64_t sum = 0;
    while ((n = pf_next_batch(r, pkts, batch)) > 0)
        for (long i = 0; i < n; i++)
            sum += pkts[i].data[12];       /* touch each packet, as a parser would */
    double t1 = now_s();
    struct pf_stats st;
    pf_stats(r, &st);
    int mm = pf_is_mmap(r);
    pf_close(r);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"packets\": %llu, \"ns_per_packet\": %.1f, \"mmap\": %d, \"rc\": %ld, "
           "\"peak_rss_mb\": %.1f, \"minor_faults\": %ld, \"check\": %llu}\n",
           (unsigned long long)st.packets, (t1 - t0) * 1e9 / (double)(st.packets ? st.packets : 1),
           mm, n, ru.ru_maxrss / 1024.0, ru.ru_minflt, (unsigned long long)sum);
    free(pkts);
    return n < 0;
}
