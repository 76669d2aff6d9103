/*
 * afxdp.h - AF_XDP receive path: an RX-only XSK socket per NIC queue fed by
 * flowprobe's own 6-instruction XDP redirect program.
 *
 * Read verbatim as the cffi cdef by driver/afxdp_build.py: declarations only,
 * no #include, no #if, no macros with expressions.
 *
 * The XDP program (struct afxdp_prog)
 *   - An XSKMAP (one slot per RX queue) and the program
 *       r2 = ctx->rx_queue_index
 *       r0 = bpf_redirect_map(&xskmap, r2, XDP_DROP)
 *       exit
 *     named "flowprobe_xsk", loaded with bpf(BPF_PROG_LOAD) and attached
 *     through a bpf_link (BPF_LINK_CREATE, BPF_XDP): the kernel detaches it
 *     when the last fd of the link closes, so a crashed or killed flowprobe
 *     leaves nothing behind. A queue without a bound socket DROPS (the
 *     capture NIC's stack never sees a frame, even before the rings open).
 *   - afxdp_prog_attach() first removes a "flowprobe_xsk" program left on the
 *     interface by a netlink attach (only that name, and only without a
 *     live bpf_link: -EBUSY then, a flowprobe runs there; any other program
 *     is an error: -EEXIST, its id in *other_id).
 *   - afxdp_prog_open() gives a second process a handle on the program an
 *     attacher put there (it finds the XSKMAP through the program's info);
 *     closing that handle never detaches.
 *
 * The socket (struct afxdp_rx)
 *   - UMEM of umem_frames chunks of frame_size bytes (power of two, 2048 or
 *     4096), RX ring of umem_frames entries, fill ring of 2 x umem_frames
 *     (every frame sits on it at start; the slack covers the kernel's lazy
 *     consumer index, see afxdp.c), the mandatory completion ring at its
 *     minimum, no TX ring. Bound with XDP_USE_NEED_WAKEUP, XDP_ZEROCOPY when
 *     the driver has it (else XDP_COPY), then inserted into the XSKMAP.
 *   - EBUSY on bind (the kernel releases a closed socket's queue ~1 s later)
 *     is retried with bounded backoff up to busy_retry_ms.
 *
 * Ownership and lifetime
 *   - afxdp_rx_next_batch() fills a caller-owned array of struct ft_pkt
 *     (include/ft_records.h; passed as void *). ft_pkt.data points
 *     INTO the UMEM: valid until afxdp_rx_release_batch(), which hands the
 *     frames back to the fill ring. One batch is held at a time.
 * Byte order: frames as on the wire, VLAN tags in-band (vlan_valid = 0).
 * Time: one CLOCK_REALTIME reading per batch, taken when the batch is read
 * (AF_XDP carries no kernel timestamp), ns since the epoch: with sleep
 * pacing a frame's time is up to sleep_us (plus any reader stall) late.
 * Waiting: AFXDP_WAIT_SLEEP sleeps sleep_us after a batch that did not fill
 * the caller's array before looking again (batches of ~sleep_us of
 * traffic); a full batch is followed at once by the next.
 * Errors: negative errno; nothing prints, nothing exits.
 */

enum afxdp_mode {
    AFXDP_MODE_AUTO = 0,         /* native (driver) if it loads, else skb */
    AFXDP_MODE_NATIVE = 1,
    AFXDP_MODE_SKB = 2
};

enum afxdp_wait_mode {
    AFXDP_WAIT_SLEEP = 0,          /* nanosleep(sleep_us) between ring checks */
    AFXDP_WAIT_POLL = 1            /* poll(): the kernel wakes us per packet */
};

struct afxdp_prog {
    int prog_fd;
    int map_fd;
    int link_fd;                 /* -1 for a handle from afxdp_prog_open() */
    int ifindex;
    uint32_t prog_id;
    uint32_t mode;               /* enum afxdp_mode actually used */
    uint32_t stale_removed;      /* leftover flowprobe programs detached */
};

/* Load and attach on ifindex with one XSKMAP slot per queue. On -EEXIST a
 * foreign program (id in *other_id) holds the interface. */
int afxdp_prog_attach(struct afxdp_prog *p, int ifindex, uint32_t queues,
                    uint32_t mode, uint32_t *other_id);
/* Handle on the flowprobe program a live process attached to ifindex
 * through its bpf_link; -ENOENT if none (a netlink leftover is stale). */
int afxdp_prog_open(struct afxdp_prog *p, int ifindex);
/* Detach (attacher only) and close the fds. Safe to call twice. */
void afxdp_prog_close(struct afxdp_prog *p);

/* What is attached to ifindex: prog id (0: none), mode (enum, 0 if none)
 * and the program's name (up to 16 bytes with the NUL). */
int afxdp_prog_query(int ifindex, uint32_t *prog_id, uint32_t *mode,
                   char *name, size_t name_len);

struct afxdp_rx_config {
    char ifname[16];
    uint32_t queue;
    uint32_t umem_frames;        /* power of two */
    uint32_t frame_size;         /* 2048 or 4096 */
    uint32_t xdp_mode;           /* the program's mode: skb never zero-copies */
    uint32_t wait_mode;          /* enum afxdp_wait_mode */
    uint32_t sleep_us;
    uint32_t busy_retry_ms;      /* total EBUSY retry budget */
    uint8_t try_zerocopy;
};

/* 64-bit totals. The kernel's XDP_STATISTICS are cumulative per socket.
 * rx_dropped includes frames too big for a chunk and fill-ring-empty drops;
 * rx_ring_full counts frames lost to a full RX ring. */
struct afxdp_rx_stats {
    uint64_t rx_dropped;
    uint64_t rx_invalid_descs;
    uint64_t rx_ring_full;
    uint64_t rx_fill_ring_empty_descs;
    uint64_t delivered;          /* descriptors handed out */
    uint64_t batches;
    uint64_t wakeups;            /* recvfrom() kicks for need_wakeup */
    uint64_t busy_retries;       /* EBUSY binds retried at open */
    uint64_t away_max_us;        /* longest time between two next_batch
                                    calls: a reader stall the UMEM must absorb */
};

struct afxdp_rx;

/* Returns NULL with *err a negative errno. *zerocopy_out: 1 when bound
 * XDP_ZEROCOPY, 0 for XDP_COPY. */
struct afxdp_rx *afxdp_rx_open(const struct afxdp_rx_config *cfg, int map_fd,
                           uint8_t *zerocopy_out, int *err);
void afxdp_rx_close(struct afxdp_rx *x);
int afxdp_rx_fd(const struct afxdp_rx *x);

/*
 * Wait up to timeout_ms for frames (poll() or sleep, per wait_mode), then
 * fill pkts[0..cap) (struct ft_pkt *) from up to cap RX descriptors.
 * Returns the count (0 on timeout) or a negative errno. -EBUSY while the
 * previous batch is still held.
 */
int afxdp_rx_next_batch(struct afxdp_rx *x, int timeout_ms, void *pkts,
                      size_t cap, uint32_t ifindex);

/* Return the held batch's frames to the fill ring (kicking the kernel when
 * it asks for a wakeup). Returns 0, or 1 when no batch was held. */
int afxdp_rx_release_batch(struct afxdp_rx *x);

/* Read XDP_STATISTICS into the totals and copy them to *out. */
int afxdp_rx_stats(struct afxdp_rx *x, struct afxdp_rx_stats *out);
