/*
 * afpacket.c - TPACKET_V3 RX ring: explicit set-up steps, a block walker
 * that fills struct ft_pkt arrays, in-order release, 64-bit statistics.
 * Contract and ownership: afpacket.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/net_tstamp.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "ft_records.h"
#include "afpacket.h"

#ifndef PACKET_FANOUT_FLAG_IGNORE_OUTGOING
#define PACKET_FANOUT_FLAG_IGNORE_OUTGOING 0x4000   /* Linux 6.2+ */
#endif

_Static_assert(sizeof(struct ring_insn) == sizeof(struct sock_filter),
               "ring_insn must match sock_filter");
_Static_assert(sizeof(struct tpacket_req3) == 28, "tpacket_req3 layout");
_Static_assert(sizeof(struct tpacket3_hdr) == 48, "tpacket3_hdr layout");
_Static_assert(offsetof(struct ft_pkt, vlan_valid) == 30, "ft_pkt layout");

/* Smallest space one packet takes in a block: tp_mac is at least 82
 * (TPACKET_ALIGN(48 + sizeof(sockaddr_ll) + 16) - 14) and a frame holds at
 * least 6 captured bytes (snaplen >= 16, Ethernet header 14), 8-aligned. */
#define RING_MIN_FRAME 88u
#define RING_MIN_SNAPLEN 16u

struct ring {
    int fd;
    int ifindex;
    uint8_t *map;
    size_t map_len;
    uint32_t block_size;
    uint32_t block_count;
    uint32_t capacity;
    uint32_t cur;               /* index of the block being read */
    int held;                   /* cur is ours (status USER) */
    uint32_t left;              /* packets of the held block not walked yet */
    struct tpacket3_hdr *next;  /* next packet of the held block */
    uint8_t busy_poll;
    uint8_t sampling_mode;
    uint32_t sampling_rate;
    uint32_t sample_count;
    uint64_t rng;
    struct ring_stats totals;
};

static int set_opt(int fd, int level, int name, const void *v, socklen_t len)
{
    return setsockopt(fd, level, name, v, len) < 0 ? -errno : 0;
}

static int attach_filter(int fd, const struct ring_insn *insns, uint32_t n)
{
    struct sock_fprog prog;

    if (n == 0 || n > BPF_MAXINSNS)
        return -EINVAL;
    prog.len = (unsigned short)n;
    prog.filter = (struct sock_filter *)insns;
    return set_opt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog));
}

static int check_config(const struct ring_config *c)
{
    long page = sysconf(_SC_PAGESIZE);

    if (c->ifindex <= 0 || c->block_count == 0 || c->block_timeout_ms == 0)
        return -EINVAL;
    if (c->block_size == 0 || c->block_size % (uint32_t)page != 0)
        return -EINVAL;
    if (c->frame_size < TPACKET3_HDRLEN || c->frame_size % TPACKET_ALIGNMENT
        || c->block_size % c->frame_size)
        return -EINVAL;
    if (c->snaplen < RING_MIN_SNAPLEN || c->sampling_rate == 0
        || c->sampling_mode > RING_SAMPLE_RANDOM)
        return -EINVAL;
    return 0;
}

/* Step: PACKET_RX_RING with every field explicit, then mmap it. */
static int setup_ring(struct ring *r, const struct ring_config *c)
{
    struct tpacket_req3 req;
    void *map;
    int rc;

    memset(&req, 0, sizeof(req));
    req.tp_block_size = c->block_size;
    req.tp_block_nr = c->block_count;
    req.tp_frame_size = c->frame_size;
    req.tp_frame_nr = (c->block_size / c->frame_size) * c->block_count;
    req.tp_retire_blk_tov = c->block_timeout_ms;
    req.tp_sizeof_priv = 0;
    req.tp_feature_req_word = 0;
    rc = set_opt(r->fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req));
    if (rc)
        return rc;
    r->map_len = (size_t)c->block_size * c->block_count;
    map = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_LOCKED | MAP_POPULATE, r->fd, 0);
    if (map == MAP_FAILED)   /* MAP_LOCKED may exceed RLIMIT_MEMLOCK */
        map = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, 0);
    if (map == MAP_FAILED)
        return -errno;
    r->map = map;
    r->block_size = c->block_size;
    r->block_count = c->block_count;
    r->capacity = (c->block_size - (uint32_t)sizeof(struct tpacket_block_desc))
                  / RING_MIN_FRAME + 1;
    return 0;
}

static int setup_fanout(int fd, const struct ring_config *c, uint32_t *flags)
{
    uint32_t f = PACKET_FANOUT_FLAG_IGNORE_OUTGOING;
    uint32_t val;
    int rc;

    if (c->fanout_defrag)
        f |= PACKET_FANOUT_FLAG_DEFRAG;
    val = (c->fanout_group & 0xffff) | ((PACKET_FANOUT_HASH | f) << 16);
    rc = set_opt(fd, SOL_PACKET, PACKET_FANOUT, &val, sizeof(val));
    if (rc == -EINVAL) {   /* kernel before 6.2: no IGNORE_OUTGOING flag */
        f &= ~(uint32_t)PACKET_FANOUT_FLAG_IGNORE_OUTGOING;
        val = (c->fanout_group & 0xffff) | ((PACKET_FANOUT_HASH | f) << 16);
        rc = set_opt(fd, SOL_PACKET, PACKET_FANOUT, &val, sizeof(val));
    }
    if (rc == 0)
        *flags = f;
    return rc;
}

struct ring *ring_open(const struct ring_config *c,
                       const struct ring_insn *filter, uint32_t filter_len,
                       uint32_t *fanout_flags_out, int *err)
{
    struct ring_insn drop_all = { BPF_RET | BPF_K, 0, 0, 0 };
    struct sockaddr_ll sll;
    struct ring *r;
    int v3 = TPACKET_V3;
    int rc;

    *err = 0;
    *fanout_flags_out = 0;
    rc = check_config(c);
    if (rc)
        goto fail_early;
    r = calloc(1, sizeof(*r));
    if (!r) {
        rc = -ENOMEM;
        goto fail_early;
    }
    r->ifindex = c->ifindex;
    r->busy_poll = c->busy_poll;
    r->sampling_mode = c->sampling_mode;
    r->sampling_rate = c->sampling_rate;
    r->rng = c->random_seed ? c->random_seed : 0x9e3779b97f4a7c15ull;

    /* 1. protocol 0: the socket receives nothing until bind() */
    r->fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (r->fd < 0) {
        rc = -errno;
        free(r);
        goto fail_early;
    }
    /* 2. version */
    rc = set_opt(r->fd, SOL_PACKET, PACKET_VERSION, &v3, sizeof(v3));
    /* 3. drop-all filter until the ring is fully set up */
    if (!rc)
        rc = attach_filter(r->fd, &drop_all, 1);
    /* 4. timestamps (software by default) */
    if (!rc && c->hw_timestamps) {
        int ts = SOF_TIMESTAMPING_RAW_HARDWARE;
        rc = set_opt(r->fd, SOL_PACKET, PACKET_TIMESTAMP, &ts, sizeof(ts));
    }
    /* 5. ring + mmap */
    if (!rc)
        rc = setup_ring(r, c);
    /* 6. bind to the one interface, every protocol */
    if (!rc) {
        memset(&sll, 0, sizeof(sll));
        sll.sll_family = AF_PACKET;
        sll.sll_protocol = htons(ETH_P_ALL);
        sll.sll_ifindex = c->ifindex;
        if (bind(r->fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
            rc = -errno;
    }
    /* 7. fanout group */
    if (!rc && c->fanout_group)
        rc = setup_fanout(r->fd, c, fanout_flags_out);
    /* 8. the real filter replaces drop-all atomically */
    if (!rc)
        rc = attach_filter(r->fd, filter, filter_len);
    if (rc) {
        ring_close(r);
        goto fail_early;
    }
    return r;

fail_early:
    *err = rc;
    return NULL;
}

void ring_close(struct ring *r)
{
    if (!r)
        return;
    if (r->map)
        munmap(r->map, r->map_len);
    if (r->fd >= 0)
        close(r->fd);
    free(r);
}

int ring_fd(const struct ring *r)
{
    return r->fd;
}

uint32_t ring_block_capacity(const struct ring *r)
{
    return r->capacity;
}

static inline struct tpacket_block_desc *block_at(struct ring *r, uint32_t i)
{
    return (struct tpacket_block_desc *)(r->map + (size_t)i * r->block_size);
}

static inline int block_ready(struct tpacket_block_desc *b)
{
    return (__atomic_load_n(&b->hdr.bh1.block_status, __ATOMIC_ACQUIRE)
            & TP_STATUS_USER) != 0;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Wait for block cur to turn USER; 1 ready, 0 timeout, <0 errno. */
static int wait_block(struct ring *r, int timeout_ms)
{
    struct tpacket_block_desc *b = block_at(r, r->cur);
    struct pollfd pfd;
    uint64_t deadline;
    int rc;

    if (block_ready(b))
        return 1;
    if (timeout_ms == 0)
        return 0;
    if (r->busy_poll) {
        deadline = now_ms() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms);
        while (!block_ready(b)) {
            if (timeout_ms >= 0 && now_ms() >= deadline)
                return 0;
            cpu_relax();
        }
        return 1;
    }
    pfd.fd = r->fd;
    pfd.events = POLLIN | POLLERR;
    pfd.revents = 0;
    rc = poll(&pfd, 1, timeout_ms);
    if (rc < 0)
        return errno == EINTR ? 0 : -errno;
    if (block_ready(b))
        return 1;
    if (pfd.revents & (POLLERR | POLLNVAL)) {
        /* The socket's pending error (ENETDOWN when the interface went
         * down or was deleted), read once: SO_ERROR clears it, so a caller
         * that goes on waiting is never woken again for the same error. */
        int err = 0;
        socklen_t len = sizeof(err);

        if (pfd.revents & POLLNVAL)
            return -EBADF;
        if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            return -errno;
        return err ? -err : 0;
    }
    return 0;
}

static inline int keep_sample(struct ring *r)
{
    uint64_t x;

    if (r->sampling_rate <= 1)
        return 1;
    if (r->sampling_mode == RING_SAMPLE_DETERMINISTIC) {
        if (++r->sample_count >= r->sampling_rate) {
            r->sample_count = 0;
            return 1;
        }
        return 0;
    }
    x = r->rng;                 /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    r->rng = x;
    return x % r->sampling_rate == 0;
}

int ring_next_block(struct ring *r, int timeout_ms, void *pkts, size_t cap)
{
    struct ft_pkt *out = pkts;
    struct tpacket_block_desc *b;
    struct tpacket3_hdr *h;
    uint8_t *end;
    size_t n = 0;
    int rc;

    if (!pkts && cap)
        return -EINVAL;
    if (!r->held) {
        rc = wait_block(r, timeout_ms);
        if (rc <= 0)
            return rc;
        b = block_at(r, r->cur);
        r->held = 1;
        r->left = b->hdr.bh1.num_pkts;
        r->next = (struct tpacket3_hdr *)((uint8_t *)b
                                          + b->hdr.bh1.offset_to_first_pkt);
        r->totals.blocks++;
    }
    b = block_at(r, r->cur);
    end = (uint8_t *)b + r->block_size;
    while (r->left && n < cap) {
        h = r->next;
        if ((uint8_t *)h + sizeof(*h) > end
            || (uint8_t *)h + h->tp_mac + h->tp_snaplen > end) {
            r->left = 0;        /* corrupt block: never read past it */
            return -EPROTO;
        }
        r->left--;
        r->next = (struct tpacket3_hdr *)((uint8_t *)h + h->tp_next_offset);
        r->totals.walked++;
        if (h->tp_snaplen < h->tp_len)
            r->totals.truncated++;
        if (!keep_sample(r)) {
            r->totals.sampled_out++;
            continue;
        }
        if (h->tp_status & TP_STATUS_TS_RAW_HARDWARE)
            r->totals.hw_timestamped++;
        out[n].data = (const uint8_t *)h + h->tp_mac;
        out[n].caplen = h->tp_snaplen;
        out[n].wirelen = h->tp_len;
        out[n].ts_ns = (uint64_t)h->tp_sec * 1000000000u + h->tp_nsec;
        out[n].ifindex = (uint32_t)r->ifindex;
        if (h->tp_status & TP_STATUS_VLAN_VALID) {
            out[n].vlan_tci = (uint16_t)h->hv1.tp_vlan_tci;
            out[n].vlan_valid = 1;
        } else {
            out[n].vlan_tci = 0;
            out[n].vlan_valid = 0;
        }
        out[n].pad = 0;
        n++;
    }
    r->totals.delivered += n;
    return (int)n;
}

int ring_release_block(struct ring *r)
{
    struct tpacket_block_desc *b;

    if (!r->held)
        return 1;
    if (r->left)
        return -EAGAIN;
    b = block_at(r, r->cur);
    __atomic_store_n(&b->hdr.bh1.block_status, TP_STATUS_KERNEL,
                     __ATOMIC_RELEASE);
    r->held = 0;
    r->next = NULL;
    r->cur = (r->cur + 1) % r->block_count;
    return 0;
}

int ring_set_filter(struct ring *r, const struct ring_insn *filter,
                    uint32_t filter_len)
{
    return attach_filter(r->fd, filter, filter_len);
}

int ring_stats(struct ring *r, struct ring_stats *out)
{
    struct tpacket_stats_v3 st;
    socklen_t len = sizeof(st);

    memset(&st, 0, sizeof(st));
    if (getsockopt(r->fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) < 0)
        return -errno;
    r->totals.kernel_packets += st.tp_packets;
    r->totals.kernel_drops += st.tp_drops;
    r->totals.freeze_q_cnt += st.tp_freeze_q_cnt;
    *out = r->totals;
    return 0;
}
