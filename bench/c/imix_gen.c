/*
 * imix_gen.c - a seeded IMIX-like capture for `make bench` (classic pcap,
 * microsecond timestamps, Ethernet).
 *
 *   imix_gen OUT.pcap PACKETS FLOWS SEED
 *
 * Frame sizes (as pcap records them: Ethernet header included, no FCS,
 * caplen = wire length) are drawn per packet from IMIX_SIZES with weights
 * IMIX_WEIGHTS, 7:4:4 over 64/576/1500 bytes (mean of the draw 583 B).
 * The simple IMIX (7:4:1) has a mean of ~354 B; 7:4:4 keeps its sizes and
 * its small:medium ratio and raises the full-size share, which puts the
 * file's mean where the measured capture was (~550 B): TCP SYNs are
 * always the smallest size, and a header larger than the drawn size (IPv6
 * TCP: 74 B) takes the header's size; the 10M-packet file measures 567 B.
 *
 * Flows: FLOWS keys, each with at least one packet; the remaining packets
 * follow a skewed (Zipf-like, weight (rank + 8)^-1.1) share, as the synth
 * captures of tests/support/synth.py. 90% IPv4, 10% IPv6; 60% TCP, 35% UDP,
 * 5% ICMP echo. Addresses only from 198.18.0.0/15 (src 198.18/16, dst
 * 198.19/16) and 2001:db8::/32. Flow i has source address i mod 65536
 * (IPv4) and source port 20000 + i / 65536; an ICMP flow carries that in
 * its echo identifier, which is no part of a flow key, so two ICMP flows
 * may share a key (999,998 keys of 1M in the 10M-packet file).
 * Flows come in windows of ~1M packets (consecutive flows), packets of a
 * window shuffled: flows start and end through the file. Gaps between
 * packets are 0-2 us. L4 checksums are left 0 (nothing here verifies them);
 * IPv4 header checksums are right.
 *
 * Prints one JSON line: packets, flows, bytes on the wire, mean frame size.
 * Same arguments, same bytes. Nothing is sent anywhere.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMIX_N 3
static const uint32_t IMIX_SIZES[IMIX_N] = {64, 576, 1500};
static const uint32_t IMIX_WEIGHTS[IMIX_N] = {7, 4, 4};
#define WINDOW_PACKETS (1u << 20)
#define OUT_BUF (8u << 20)
#define START_S 1685577600u          /* 2023-06-01T00:00:00Z */

static uint64_t rng_state;

static uint64_t rnd(void)            /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint32_t below(uint32_t n) { return (uint32_t)(((rnd() >> 32) * n) >> 32); }

struct flow {
    uint8_t v6, proto;               /* 6, 17, 1 (58 for v6) */
    uint16_t sport, dport;
    uint32_t left;                   /* packets still to write */
    uint32_t total;
    uint8_t src[16], dst[16];
};

static uint8_t out[OUT_BUF];
static size_t out_len;
static FILE *fh;

static void put(const void *p, size_t n)
{
    if (out_len + n > OUT_BUF) {
        if (fwrite(out, 1, out_len, fh) != out_len) {
            perror("write");
            exit(1);
        }
        out_len = 0;
    }
    memcpy(out + out_len, p, n);
    out_len += n;
}

static void put_zero(size_t n)
{
    if (out_len + n > OUT_BUF) {
        if (fwrite(out, 1, out_len, fh) != out_len) {
            perror("write");
            exit(1);
        }
        out_len = 0;
    }
    memset(out + out_len, 0, n);
    out_len += n;
}

static uint16_t ip4_csum(const uint8_t *h)
{
    uint32_t s = 0;
    for (int i = 0; i < 20; i += 2)
        s += (uint32_t)h[i] << 8 | h[i + 1];
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint16_t)~s;
}

static void be16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

/* one frame of flow f, packet index k of f->total, frame size `size` */
static uint32_t frame(const struct flow *f, uint32_t k, uint32_t size, uint8_t *buf)
{
    uint32_t l3 = f->v6 ? 40 : 20;
    uint32_t l4 = f->proto == 6 ? 20 : 8;
    uint32_t hdr = 14 + l3 + l4;
    uint8_t flags = 0x18;                          /* ACK|PSH */
    if (f->proto == 6) {
        if (k == 0 && f->total > 1) {
            flags = 0x02;                          /* SYN */
            size = IMIX_SIZES[0];
        } else if (k == f->total - 1 && f->total > 1) {
            flags = 0x11;                          /* FIN|ACK */
        }
    }
    if (size < hdr)
        size = hdr;
    memset(buf, 0, hdr);
    buf[0] = 0x02; buf[1] = 0xfe; memcpy(buf + 2, f->dst + (f->v6 ? 12 : 0), 4);
    buf[6] = 0x02; memcpy(buf + 7, f->src + (f->v6 ? 11 : 0), 5);
    uint8_t *ip = buf + 14, *l4p = ip + l3;
    if (f->v6) {
        buf[12] = 0x86; buf[13] = 0xDD;
        ip[0] = 0x60;
        be16(ip + 4, size - 14 - 40);
        ip[6] = f->proto;
        ip[7] = 64;
        memcpy(ip + 8, f->src, 16);
        memcpy(ip + 24, f->dst, 16);
    } else {
        buf[12] = 0x08; buf[13] = 0x00;
        ip[0] = 0x45;
        be16(ip + 2, size - 14);
        be16(ip + 4, k & 0xFFFF);
        ip[8] = 64;
        ip[9] = f->proto;
        memcpy(ip + 12, f->src, 4);
        memcpy(ip + 16, f->dst, 4);
        be16(ip + 10, ip4_csum(ip));
    }
    if (f->proto == 6) {
        be16(l4p, f->sport); be16(l4p + 2, f->dport);
        l4p[12] = 0x50; l4p[13] = flags; be16(l4p + 14, 65535);
    } else if (f->proto == 17) {
        be16(l4p, f->sport); be16(l4p + 2, f->dport);
        be16(l4p + 4, size - 14 - l3);
    } else {
        l4p[0] = f->v6 ? 128 : 8;                  /* echo request */
        be16(l4p + 4, f->sport); be16(l4p + 6, k & 0xFFFF);
    }
    return size;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: imix_gen OUT.pcap PACKETS FLOWS SEED\n");
        return 2;
    }
    uint64_t packets = strtoull(argv[2], NULL, 10);
    uint32_t flows = (uint32_t)strtoul(argv[3], NULL, 10);
    rng_state = strtoull(argv[4], NULL, 10) * 0x2545F4914F6CDD1Dull + 1;
    if (flows < 1 || packets < flows || packets > 0xFFFFFFFFull || flows > (1u << 24)) {
        fprintf(stderr, "imix_gen: need 1 <= FLOWS <= PACKETS < 2^32, FLOWS <= 2^24\n");
        return 2;
    }
    struct flow *fl = calloc(flows, sizeof(*fl));
    uint32_t *rank = malloc(sizeof(uint32_t) * flows);
    uint32_t *order = malloc(sizeof(uint32_t) * WINDOW_PACKETS);
    if (!fl || !rank || !order) {
        perror("malloc");
        return 1;
    }
    /* packets per flow: 1 + a skewed share of the rest, ranks shuffled */
    for (uint32_t i = 0; i < flows; i++)
        rank[i] = i;
    for (uint32_t i = flows - 1; i > 0; i--) {
        uint32_t j = below(i + 1), t = rank[i];
        rank[i] = rank[j];
        rank[j] = t;
    }
    double wsum = 0;
    for (uint32_t r = 0; r < flows; r++)
        wsum += pow(r + 8.0, -1.1);
    uint64_t extra = packets - flows, given = 0;
    for (uint32_t r = 0; r < flows; r++) {
        uint32_t c = (uint32_t)(pow(r + 8.0, -1.1) / wsum * (double)extra);
        fl[rank[r]].total = 1 + c;
        given += c;
    }
    for (uint64_t r = 0; r < extra - given; r++)
        fl[rank[r % flows]].total++;
    free(rank);
    for (uint32_t i = 0; i < flows; i++) {
        struct flow *f = &fl[i];
        f->left = f->total;
        f->v6 = below(10) == 0;
        uint32_t p = below(100);
        f->proto = p < 60 ? 6 : p < 95 ? 17 : (f->v6 ? 58 : 1);
        f->sport = (uint16_t)(20000 + (i >> 16));
        f->dport = (uint16_t)(f->proto == 6 ? (below(2) ? 443 : 80 + below(1000))
                                            : 1024 + below(60000));
        if (f->proto == 1 || f->proto == 58)
            f->dport = 0;
        if (f->v6) {
            static const uint8_t p6[4] = {0x20, 0x01, 0x0d, 0xb8};
            memcpy(f->src, p6, 4); memcpy(f->dst, p6, 4);
            f->src[5] = 1; f->dst[5] = 2;
            f->src[13] = (uint8_t)(i >> 16); f->src[14] = (uint8_t)(i >> 8);
            f->src[15] = (uint8_t)i;
            uint64_t r = rnd();
            memcpy(f->dst + 8, &r, 8);
        } else {
            f->src[0] = 198; f->src[1] = 18; f->src[2] = (uint8_t)(i >> 8);
            f->src[3] = (uint8_t)i;
            f->dst[0] = 198; f->dst[1] = 19; f->dst[2] = (uint8_t)below(256);
            f->dst[3] = (uint8_t)(1 + below(254));
        }
    }
    fh = fopen(argv[1], "wb");
    if (!fh) {
        perror(argv[1]);
        return 1;
    }
    const uint32_t ghdr[6] = {0xa1b2c3d4u, 2 | 4u << 16, 0, 0, 65535, 1};
    put(ghdr, sizeof(ghdr));
    uint32_t wsum_i = 0;
    for (int s = 0; s < IMIX_N; s++)
        wsum_i += IMIX_WEIGHTS[s];
    uint64_t clock_us = (uint64_t)START_S * 1000000u, wire = 0, written = 0;
    uint8_t buf[2048];
    uint32_t first = 0;
    while (first < flows) {
        uint32_t last = first, n = 0;
        while (last < flows && (n == 0 || n + fl[last].total <= WINDOW_PACKETS)) {
            n += fl[last].total;
            last++;
        }
        if (n > WINDOW_PACKETS) {                  /* one flow larger than a window */
            fprintf(stderr, "imix_gen: a flow of %u packets exceeds the window\n", n);
            return 1;
        }
        uint32_t o = 0;
        for (uint32_t i = first; i < last; i++)
            for (uint32_t k = 0; k < fl[i].total; k++)
                order[o++] = i;
        for (uint32_t i = n - 1; i > 0; i--) {
            uint32_t j = below(i + 1), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (uint32_t i = 0; i < n; i++) {
            struct flow *f = &fl[order[i]];
            uint32_t x = below(wsum_i), s = 0;
            while (x >= IMIX_WEIGHTS[s]) {
                x -= IMIX_WEIGHTS[s];
                s++;
            }
            uint32_t len = frame(f, f->total - f->left, IMIX_SIZES[s], buf);
            f->left--;
            uint32_t rec[4] = {(uint32_t)(clock_us / 1000000u),
                               (uint32_t)(clock_us % 1000000u), len, len};
            put(rec, sizeof(rec));
            uint32_t hdr = (f->v6 ? 54 : 34) + (f->proto == 6 ? 20 : 8);
            put(buf, hdr);
            put_zero(len - hdr);
            clock_us += below(3);
            wire += len;
            written++;
        }
        first = last;
    }
    if (fwrite(out, 1, out_len, fh) != out_len || fclose(fh) != 0) {
        perror("write");
        return 1;
    }
    printf("{\"packets\": %llu, \"flows\": %u, \"wire_bytes\": %llu, "
           "\"mean_frame_bytes\": %.1f, \"mix\": \"7:4:4 over 64/576/1500\"}\n",
           (unsigned long long)written, flows, (unsigned long long)wire,
           (double)wire / (double)written);
    free(order);
    free(fl);
    return 0;
}
