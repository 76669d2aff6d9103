/*
 * afxdp.c - AF_XDP receive path (see afxdp.h for the contract): one RX-only
 * XSK socket per queue (libxdp for the UMEM/ring set-up, its own program
 * loading inhibited: afxdp_prog.c provides the program and the XSKMAP).
 * libbpf/libxdp code lives here, libpcap code in afpacket_filter.c: both define
 * struct bpf_insn.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <xdp/xsk.h>

#include "ft_records.h"
#include "afxdp.h"

#define AFXDP_COMP_SIZE 64          /* completion ring: mandatory, unused */

/*
 * FILL_RING_SLACK: the fill ring has 2 x umem_frames slots. The kernel
 * publishes its fill-ring consumer index lazily (only when its cached
 * window runs out), so frames it already took and delivered can still look
 * queued: up to umem_frames of them, plus the umem_frames frames really
 * queued. With twice the slots, returning a batch never finds the ring full.
 */
struct afxdp_rx {
    struct xsk_ring_cons rx;
    struct xsk_ring_prod fill;
    struct xsk_ring_cons comp;
    struct xsk_umem *umem;
    struct xsk_socket *xsk;
    uint8_t *area;
    size_t area_len;
    uint64_t *held;             /* frame addresses of the batch handed out */
    uint32_t n_held;
    uint32_t frames;
    uint32_t frame_size;
    uint32_t wait_mode;
    uint32_t sleep_us;
    int fd;
    int last_full;              /* the previous batch filled the array */
    uint64_t left_us;           /* when the last next_batch returned */
    struct afxdp_rx_stats st;
};

static int is_pow2(uint32_t v) { return v && !(v & (v - 1)); }

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void sleep_us(uint32_t us)
{
    struct timespec ts = {us / 1000000u, (long)(us % 1000000u) * 1000L};
    nanosleep(&ts, NULL);
}

static void rx_teardown(struct afxdp_rx *x)
{
    if (x->xsk)
        xsk_socket__delete(x->xsk);
    if (x->umem)
        xsk_umem__delete(x->umem);
    x->xsk = NULL;
    x->umem = NULL;
}

/* One attempt at UMEM + socket; returns 0 or -errno. */
static int rx_create(struct afxdp_rx *x, const struct afxdp_rx_config *cfg,
                     int zerocopy)
{
    struct xsk_umem_config ucfg = {
        .fill_size = 2 * cfg->umem_frames, .comp_size = AFXDP_COMP_SIZE,
        .frame_size = cfg->frame_size, .frame_headroom = 0, .flags = 0};
    struct xsk_socket_config scfg = {
        .rx_size = cfg->umem_frames, .tx_size = 0,
        .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
        .xdp_flags = cfg->xdp_mode == AFXDP_MODE_SKB ? XDP_FLAGS_SKB_MODE
                                                     : XDP_FLAGS_DRV_MODE,
        .bind_flags = XDP_USE_NEED_WAKEUP | (zerocopy ? XDP_ZEROCOPY : XDP_COPY)};
    char ifname[sizeof(cfg->ifname) + 1];

    memcpy(ifname, cfg->ifname, sizeof(cfg->ifname));
    ifname[sizeof(cfg->ifname)] = '\0';
    int rc = xsk_umem__create(&x->umem, x->area, x->area_len, &x->fill,
                              &x->comp, &ucfg);
    if (rc) {
        x->umem = NULL;
        return rc < 0 ? rc : -rc;
    }
    rc = xsk_socket__create(&x->xsk, ifname, cfg->queue, x->umem, &x->rx,
                            NULL, &scfg);
    if (rc) {
        x->xsk = NULL;
        rx_teardown(x);
        return rc < 0 ? rc : -rc;
    }
    return 0;
}

static int rx_fill_all(struct afxdp_rx *x)
{
    uint32_t idx = 0;
    if (xsk_ring_prod__reserve(&x->fill, x->frames, &idx) != x->frames)
        return -ENOSPC;
    for (uint32_t i = 0; i < x->frames; i++)
        *xsk_ring_prod__fill_addr(&x->fill, idx + i) = (uint64_t)i * x->frame_size;
    xsk_ring_prod__submit(&x->fill, x->frames);
    return 0;
}

struct afxdp_rx *afxdp_rx_open(const struct afxdp_rx_config *cfg, int map_fd,
                               uint8_t *zerocopy_out, int *err)
{
    struct afxdp_rx *x = NULL;
    int rc;

    *zerocopy_out = 0;
    if (!is_pow2(cfg->umem_frames) || cfg->umem_frames < 64 ||
        !is_pow2(cfg->frame_size) || cfg->frame_size < 2048 ||
        cfg->frame_size > 4096 || cfg->ifname[0] == '\0') {
        rc = -EINVAL;
        goto fail;
    }
    x = calloc(1, sizeof(*x));
    if (!x) {
        rc = -ENOMEM;
        goto fail;
    }
    x->frames = cfg->umem_frames;
    x->frame_size = cfg->frame_size;
    x->wait_mode = cfg->wait_mode;
    x->sleep_us = cfg->sleep_us ? cfg->sleep_us : 1;
    x->area_len = (size_t)x->frames * x->frame_size;
    x->held = calloc(x->frames, sizeof(*x->held));
    x->area = mmap(NULL, x->area_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (!x->held || x->area == MAP_FAILED) {
        rc = x->area == MAP_FAILED ? -errno : -ENOMEM;
        if (x->area == MAP_FAILED)
            x->area = NULL;
        goto fail;
    }
    int zc = cfg->try_zerocopy && cfg->xdp_mode != AFXDP_MODE_SKB;
    uint64_t deadline = mono_ms() + cfg->busy_retry_ms;
    uint32_t backoff_ms = 50;
    for (;;) {
        rc = rx_create(x, cfg, zc);
        if (rc == 0)
            break;
        if (zc && (rc == -EOPNOTSUPP || rc == -EPROTONOSUPPORT)) {
            zc = 0;             /* the driver has no zero-copy: copy mode */
            continue;
        }
        if (rc != -EBUSY || mono_ms() >= deadline)
            goto fail;
        x->st.busy_retries++;   /* the queue is still held by a closed socket */
        sleep_us(backoff_ms * 1000u);
        if (backoff_ms < 400)
            backoff_ms *= 2;
    }
    *zerocopy_out = (uint8_t)zc;
    x->fd = xsk_socket__fd(x->xsk);
    rc = rx_fill_all(x);
    if (rc)
        goto fail;
    rc = xsk_socket__update_xskmap(x->xsk, map_fd);
    if (rc) {
        rc = rc < 0 ? rc : -rc;
        goto fail;
    }
    return x;
fail:
    if (x)
        afxdp_rx_close(x);
    *err = rc;
    return NULL;
}

void afxdp_rx_close(struct afxdp_rx *x)
{
    if (!x)
        return;
    rx_teardown(x);     /* closing the socket also clears its XSKMAP slot */
    if (x->area)
        munmap(x->area, x->area_len);
    free(x->held);
    free(x);
}

int afxdp_rx_fd(const struct afxdp_rx *x)
{
    return x->fd;
}

static void kick_if_needed(struct afxdp_rx *x)
{
    if (xsk_ring_prod__needs_wakeup(&x->fill)) {
        recvfrom(x->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
        x->st.wakeups++;
    }
}

/* Wait until the RX ring has descriptors or timeout_ms passes. */
static int rx_wait(struct afxdp_rx *x, int timeout_ms)
{
    if (timeout_ms <= 0)
        return 0;
    if (x->wait_mode == AFXDP_WAIT_POLL) {
        struct pollfd pfd = {.fd = x->fd, .events = POLLIN};
        if (poll(&pfd, 1, timeout_ms) < 0)
            return -errno;
        return 0;
    }
    uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        kick_if_needed(x);
        uint64_t now = mono_ms();
        if (now >= deadline)
            return 0;
        uint64_t left_us = (deadline - now) * 1000u;
        sleep_us(left_us < x->sleep_us ? (uint32_t)left_us : x->sleep_us);
        if (xsk_cons_nb_avail(&x->rx, 1))
            return 0;
    }
}

static int rx_batch(struct afxdp_rx *x, int timeout_ms, struct ft_pkt *out,
                    size_t cap, uint32_t ifindex);

int afxdp_rx_next_batch(struct afxdp_rx *x, int timeout_ms, void *pkts,
                        size_t cap, uint32_t ifindex)
{
    struct ft_pkt *out = pkts;

    if (x->n_held)
        return -EBUSY;
    uint64_t entry_us = mono_us();
    if (x->left_us && entry_us - x->left_us > x->st.away_max_us)
        x->st.away_max_us = entry_us - x->left_us;
    int rc = rx_batch(x, timeout_ms, out, cap, ifindex);
    x->left_us = mono_us();
    return rc;
}

/* afxdp_rx_next_batch without the bookkeeping of time spent away. */
static int rx_batch(struct afxdp_rx *x, int timeout_ms, struct ft_pkt *out,
                    size_t cap, uint32_t ifindex)
{
    uint32_t idx = 0;

    if (cap > x->frames)
        cap = x->frames;
    /* Sleep mode paces the reader: after a batch that did not fill the
     * array, wait one interval before looking again, so batches hold
     * sleep_us worth of frames instead of the few that arrived meanwhile
     * (each batch costs a Python round trip). A full batch means backlog:
     * read on at once. */
    uint32_t n = 0;
    if (x->wait_mode == AFXDP_WAIT_POLL || x->last_full || timeout_ms <= 0)
        n = xsk_ring_cons__peek(&x->rx, (uint32_t)cap, &idx);
    if (!n) {
        int rc = rx_wait(x, timeout_ms);
        if (rc)
            return rc;
        n = xsk_ring_cons__peek(&x->rx, (uint32_t)cap, &idx);
        if (!n)
            return 0;
    }
    x->last_full = n == cap;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    uint64_t chunk_mask = ~(uint64_t)(x->frame_size - 1);
    for (uint32_t i = 0; i < n; i++) {
        const struct xdp_desc *d = xsk_ring_cons__rx_desc(&x->rx, idx + i);
        x->held[i] = d->addr & chunk_mask;
        out[i].data = x->area + d->addr;
        out[i].caplen = d->len;
        out[i].wirelen = d->len;
        out[i].ts_ns = now_ns;
        out[i].ifindex = ifindex;
        out[i].vlan_tci = 0;
        out[i].vlan_valid = 0;
        out[i].pad = 0;
    }
    xsk_ring_cons__release(&x->rx, n);
    x->n_held = n;
    x->st.delivered += n;
    x->st.batches++;
    return (int)n;
}

int afxdp_rx_release_batch(struct afxdp_rx *x)
{
    uint32_t idx = 0, n = x->n_held;

    if (!n)
        return 1;
    if (xsk_ring_prod__reserve(&x->fill, n, &idx) != n)
        return -ENOSPC;     /* cannot happen: see FILL_RING_SLACK */
    for (uint32_t i = 0; i < n; i++)
        *xsk_ring_prod__fill_addr(&x->fill, idx + i) = x->held[i];
    xsk_ring_prod__submit(&x->fill, n);
    x->n_held = 0;
    kick_if_needed(x);
    return 0;
}

int afxdp_rx_stats(struct afxdp_rx *x, struct afxdp_rx_stats *out)
{
    struct xdp_statistics xs;
    socklen_t len = sizeof(xs);

    memset(&xs, 0, sizeof(xs));
    if (getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &xs, &len))
        return -errno;
    x->st.rx_dropped = xs.rx_dropped;
    x->st.rx_invalid_descs = xs.rx_invalid_descs;
    x->st.rx_ring_full = xs.rx_ring_full;
    x->st.rx_fill_ring_empty_descs = xs.rx_fill_ring_empty_descs;
    *out = x->st;
    return 0;
}
