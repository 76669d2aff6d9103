/*
 * pf_reader_san.c - the capture-file reader (driver/pcapfile*.c) built
 * with sanitizers (ASan+UBSan, or TSan): every file given is read whole
 * with changing caps (the reader thread hands slots out in parts) and
 * checked against a libpcap read, then opened again and closed at every
 * stage: before any read, after one batch (slots ready), after the reader
 * thread filled its ring and waits, mid-file with caps that split slots.
 * Prints "ok <packets>"; any sanitizer report fails the run.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ft_records.h"
#include "pcapfile.h"

#define CAP 4096

static struct ft_pkt a[CAP], b[CAP];

static int die(const char *what, const char *path)
{
    fprintf(stderr, "%s: %s\n", path, what);
    return 1;
}

/* Read all of path, mmap (caps 4096, then 1..97) against libpcap. */
static long compare(const char *path)
{
    char eb[PF_ERRBUF_SIZE];
    int err, i = 0;
    struct pf_reader *m = pf_open(path, 0, eb, &err);
    struct pf_reader *l = pf_open(path, 1, eb, &err);
    long total = 0, nm, nl, k;
    struct pf_stats st;
    uint64_t capb = 0;

    if (m == NULL || l == NULL)
        return -1;
    for (;;) {
        size_t cap = i++ == 0 ? CAP : (size_t)(1 + (i * 37) % 97);
        nm = pf_next_batch(m, a, cap);
        if (nm <= 0)
            break;
        for (k = 0; k < nm; k++) {
            nl = pf_next_batch(l, b, 1);
            if (nl != 1 || a[k].caplen != b[0].caplen ||
                a[k].wirelen != b[0].wirelen || a[k].ts_ns != b[0].ts_ns ||
                memcmp(a[k].data, b[0].data, a[k].caplen) != 0)
                return -1;
            capb += a[k].caplen;
        }
        total += nm;
        pf_stats(m, &st);
        if (st.packets != (uint64_t)total || st.cap_bytes != capb)
            return -1;
    }
    if (nm != pf_next_batch(l, b, 1))   /* same end, same error */
        return -1;
    pf_close(m);
    pf_close(l);
    return total;
}

static int close_at(const char *path, int stage)
{
    char eb[PF_ERRBUF_SIZE];
    int err, i;
    struct pf_reader *m = pf_open(path, 0, eb, &err);

    if (m == NULL)
        return -1;
    if (stage >= 1 && pf_next_batch(m, a, CAP) < 0)
        return -1;
    if (stage == 2)
        usleep(20000);             /* the ring fills, the thread waits */
    for (i = 0; stage == 3 && i < 50; i++)
        if (pf_next_batch(m, a, (size_t)(1 + i * 13 % 700)) < 0)
            return -1;
    pf_close(m);
    return 0;
}

int main(int argc, char **argv)
{
    long total = 0;
    int i, stage;

    for (i = 1; i < argc; i++) {
        long n = compare(argv[i]);
        if (n < 0)
            return die("mmap and libpcap reads differ", argv[i]);
        total += n;
        for (stage = 0; stage < 4; stage++)
            if (close_at(argv[i], stage) != 0)
                return die("close", argv[i]);
    }
    printf("ok %ld\n", total);
    return 0;
}
