/*
 * ring.h - AF_PACKET TPACKET_V3 receive ring (RX only, never a TX ring).
 *
 * Read verbatim as the cffi cdef by driver/_ring_build.py: declarations only,
 * no #include, no #if, no macros with expressions.
 *
 * Ownership and lifetime
 *   - ring_open() creates the socket, the mmap'd ring and the struct ring;
 *     ring_close() releases all three. Nothing is allocated afterwards.
 *   - ring_next_block() fills a caller-owned array of struct ft_pkt (see
 *     probe/flowtable/flowtable.h; passed as void *). Each ft_pkt.data points
 *     INTO the mmap'd block: valid only until ring_release_block().
 *   - Blocks are handed back strictly in order; a block kept too long makes
 *     the kernel freeze the queue and drop (counted in freeze_q_cnt, drops).
 *
 * Set-up order in ring_open (nothing captured from other interfaces, no
 * packet counted before the real filter): socket(AF_PACKET, SOCK_RAW, 0),
 * PACKET_VERSION = TPACKET_V3, drop-all filter (ret #0), [PACKET_TIMESTAMP],
 * PACKET_RX_RING, mmap, bind(ifindex, ETH_P_ALL), [PACKET_FANOUT], real filter.
 *
 * Byte order: packet bytes as on the wire (the outer VLAN tag is stripped by
 * the kernel and reported in vlan_tci, host order). Times in ns since epoch.
 * Errors: negative errno; nothing prints, nothing exits.
 */

/* One classic BPF instruction (struct sock_filter / struct bpf_insn). */
struct ring_insn {
    uint16_t code;
    uint8_t jt;
    uint8_t jf;
    uint32_t k;
};

enum ring_sampling {
    RING_SAMPLE_DETERMINISTIC = 0,  /* every Nth packet */
    RING_SAMPLE_RANDOM = 1          /* each packet with probability 1/N */
};

struct ring_config {
    int ifindex;
    uint32_t block_size;        /* bytes, multiple of the page size */
    uint32_t block_count;
    uint32_t frame_size;        /* bytes, divides block_size (V3 geometry) */
    uint32_t block_timeout_ms;  /* retire_blk_tov: must be > 0 */
    uint32_t snaplen;           /* enforced by the filter's return value */
    uint32_t fanout_group;      /* 0: no fanout */
    uint8_t fanout_defrag;      /* PACKET_FANOUT_FLAG_DEFRAG */
    uint8_t busy_poll;          /* spin instead of poll() */
    uint8_t hw_timestamps;      /* PACKET_TIMESTAMP raw hardware */
    uint8_t sampling_mode;      /* enum ring_sampling */
    uint32_t sampling_rate;     /* 1: every packet; N: 1 in N */
    uint64_t random_seed;       /* RING_SAMPLE_RANDOM */
};

/* 64-bit running totals. kernel_packets includes kernel_drops (it is what
 * passed the filter); walked = packets found in blocks;
 * walked = delivered + sampled_out. */
struct ring_stats {
    uint64_t kernel_packets;
    uint64_t kernel_drops;
    uint64_t freeze_q_cnt;
    uint64_t walked;
    uint64_t delivered;
    uint64_t sampled_out;
    uint64_t blocks;
    uint64_t truncated;         /* caplen < wirelen */
    uint64_t hw_timestamped;
};

struct ring;

/* Returns NULL with *err set to a negative errno. *fanout_flags_out gets
 * the PACKET_FANOUT flags the kernel accepted (0 without fanout). */
struct ring *ring_open(const struct ring_config *cfg,
                       const struct ring_insn *filter, uint32_t filter_len,
                       uint32_t *fanout_flags_out, int *err);
void ring_close(struct ring *r);
int ring_fd(const struct ring *r);

/* Most packets one block can hold: size the ft_pkt array with this. */
uint32_t ring_block_capacity(const struct ring *r);

/*
 * Wait up to timeout_ms (poll(), or spin with busy_poll) for the next block,
 * then walk it filling pkts[0..cap) (struct ft_pkt *). Returns the number of
 * packets filled (0 on timeout, or when every packet was sampled out), or a
 * negative errno. If the block holds more than cap packets the next call
 * continues the same block; ring_release_block() then returns -EAGAIN.
 */
int ring_next_block(struct ring *r, int timeout_ms, void *pkts, size_t cap);

/* Hand the walked block back to the kernel (release store). Returns 0,
 * 1 when no block was held, -EAGAIN when the block is not fully walked. */
int ring_release_block(struct ring *r);

/* Swap the socket filter atomically (SO_ATTACH_FILTER replaces). */
int ring_set_filter(struct ring *r, const struct ring_insn *filter,
                    uint32_t filter_len);

/* Read PACKET_STATISTICS (resets the kernel's) into the running totals and
 * copy the totals to *out. */
int ring_stats(struct ring *r, struct ring_stats *out);

/*
 * bpf.c: compile a tcpdump expression on a live libpcap handle of iface
 * (so VLAN tests use the kernel's VLAN metadata), accept returns set to
 * snaplen. Writes up to cap instructions; returns their count, or a
 * negative errno with a message in err. The process must be in the
 * interface's network namespace. iface NULL: compile for the Ethernet link
 * type on a dead handle (no interface, no privileges), which checks the
 * expression only: `flowprobe config check` uses it.
 */
int ring_filter_compile(const char *iface, const char *expr, uint32_t snaplen,
                        struct ring_insn *out, uint32_t cap,
                        char *err, size_t errlen);

/* The drop-all program (ret #0) that pcap_compile never produces. */
int ring_filter_drop_all(struct ring_insn *out, uint32_t cap);
