/*
 * flowtable.h - the flow engine's C API: parse -> hash -> update -> expire.
 *
 * The packets it takes (struct ft_pkt) and the records it hands out (struct
 * ft_record), their link types and end reasons are declared in
 * include/ft_records.h, shared with the capture drivers and the encoder:
 * include that header first. flowtable_build.py reads both verbatim as the
 * cffi cdef, ft_records.h first, so this file holds only declarations cffi
 * understands: no #include, no #if, no macros with expressions.
 * Compile-time checks live in flowtable.c.
 *
 * Ownership and lifetime
 *   - ft_new() allocates everything the table will ever use (flow slab, hash
 *     buckets, timer wheel, pending-record buffer); nothing is allocated per
 *     packet or per record afterwards. ft_free() releases it all.
 *   - Packet data handed to ft_ingest() is only read during the call.
 *   - Records are copied into caller-owned arrays by ft_expire().
 *
 * Byte order
 *   - As in include/ft_records.h: addresses in network byte order, every
 *     other integer in host byte order.
 *
 * Time
 *   - All times are nanoseconds since the Unix epoch. The table's clock is
 *     the largest packet time it has seen (packet time drives expiry, so a
 *     replay is deterministic); a live reader also advances it with
 *     ft_expire(now_ns) from a timer when no packets arrive.
 *
 * Errors
 *   - Functions return 0 (or a count) on success and a negative errno on
 *     failure. Nothing prints, nothing exits.
 */

/*
 * Why a packet was not accounted in a flow. Each has a 64-bit counter.
 * Rule: a packet is accepted once its network header (IPv4 header with
 * options, or the IPv6 fixed header) is fully captured and consistent.
 * What lies beyond it (IPv6 extension headers, ports, TCP flags, ICMP
 * type/code) is best effort: fields that were not captured are zero and the
 * packet is also counted in ft_stats.l4_partial.
 */
enum ft_skip {
    FT_SKIP_LINKTYPE = 0,      /* link type the parser does not handle */
    FT_SKIP_L2_TRUNCATED = 1,  /* link-layer header not fully captured */
    FT_SKIP_NON_IP = 2,        /* ARP, LLDP, STP, 802.3/LLC, PPPoE, ... */
    FT_SKIP_VLAN_DEPTH = 3,    /* more than two VLAN tags */
    FT_SKIP_MPLS = 4,          /* label stack over 8 deep, or non-IP payload */
    FT_SKIP_IP_TRUNCATED = 5,  /* network header not fully captured */
    FT_SKIP_IP_VERSION = 6,    /* version nibble not 4/6, or not as framed */
    FT_SKIP_IP_HEADER = 7,     /* IHL < 5, or total length < header length */
    FT_SKIP_IP_LENGTH = 8,     /* IP length larger than the frame on the wire */
    FT_SKIP_COUNT = 9
};

/* Configuration of a table; every field must be set (no hidden defaults,
 * the Python config objects are the single source of defaults). */
struct ft_config {
    uint32_t max_flows;        /* fixed capacity, allocated once */
    uint32_t record_buffer;    /* pending expired records held between drains */
    uint64_t idle_timeout_ns;
    uint64_t active_timeout_ns;
    uint64_t tcp_end_grace_ns; /* after FIN both ways / RST */
    uint32_t ifindex;          /* ingress interface of packets without one */
    uint32_t dpi;              /* 1: application identification (nDPI) on */
    uint32_t dpi_max_flows;    /* nDPI flow states, allocated once (dpi on: >= 1) */
    uint32_t prefault;         /* 1: a helper thread maps the slab's pages ahead
                                  of the flows taken from it (see ft_new) */
};

/* 64-bit counters of one table. Every packet offered to ft_ingest lands in
 * exactly one of: accepted, skipped[reason]. */
struct ft_stats {
    uint64_t packets_seen;
    uint64_t packets_accepted;
    uint64_t octets_accepted;
    uint64_t skipped[9];       /* indexed by enum ft_skip */
    uint64_t l4_partial;       /* accepted without (all) transport fields */
    uint64_t fragments;        /* accepted non-first fragments (no ports) */
    uint64_t flows_created;    /* with dpi on, a flow kept over an active
                                  timeout (expire.c) is created once */
    uint64_t flows_expired[6]; /* indexed by enum ft_end_reason (0 unused) */
    uint64_t records_emitted;  /* records handed out by ft_expire */
    uint64_t packets_emitted;  /* sum of packets over emitted records */
    uint64_t octets_emitted;
    uint64_t flows_active;     /* dpi on: includes flows kept (empty) over
                                  an active timeout until they end */
    uint64_t flows_peak;
    uint64_t records_pending;
    uint64_t last_linktype_unsupported; /* the last unknown link type seen
                                           (the whole 32-bit value) */
    uint64_t now_ns;           /* the table's clock */
    /* Application identification (all 0 when dpi is off). "Conversations"
     * are the pairs of opposite flows that share one nDPI flow state.
     * dpi_inspected = detected + guessed + unknown + dpi_pool_in_use. */
    uint64_t dpi_inspected;    /* conversations given an nDPI state */
    uint64_t dpi_detected;     /* ended classified by nDPI (FT_APP_DETECTED) */
    uint64_t dpi_guessed;      /* ended with giveup's guess (FT_APP_GUESSED) */
    uint64_t dpi_unknown;      /* ended with nothing (FT_APP_UNKNOWN) */
    uint64_t dpi_no_state;     /* conversations that found the pool empty */
    uint64_t dpi_packets;      /* packets given to ndpi_detection_process_packet */
    uint64_t dpi_pool_in_use;  /* nDPI states held now */
    uint64_t dpi_pool_peak;    /* their high-water mark */
};

struct ft_table;

/* Returns NULL with *err set to a negative errno (-EINVAL, -ENOMEM; -ENOSYS
 * when dpi is on and the nDPI library does not match the headers built
 * against: its flow state has another size). */
struct ft_table *ft_new(const struct ft_config *cfg, int *err);
void ft_free(struct ft_table *t);

/* The approximate memory the table holds (nDPI's module and the bytes nDPI
 * allocates inside flow states excluded), the bytes per flow slot, and the
 * bytes per nDPI flow state slot (struct ndpi_flow_struct + bookkeeping). */
uint64_t ft_memory_bytes(const struct ft_table *t);
uint32_t ft_flow_entry_size(void);
uint32_t ft_dpi_slot_size(void);

/*
 * Parse and account packets pkts[0..n). Stops early when the pending record
 * buffer cannot take what one more packet may expire; *consumed says how
 * many packets were taken. Drain with ft_expire() and call again with the
 * rest. A flush not yet collected is finished first: until every flow it
 * ends is in the pending buffer no packet is taken, and later packets start
 * new flows. Returns 0, or -EINVAL on bad arguments.
 */
int ft_ingest(struct ft_table *t, uint32_t linktype, const struct ft_pkt *pkts,
              size_t n, size_t *consumed);

/*
 * Advance the clock to max(clock, now_ns), expire every flow that is due,
 * and copy up to cap pending records into out. Returns the number of
 * records written; a return of cap means more may be pending: call again.
 */
size_t ft_expire(struct ft_table *t, uint64_t now_ns,
                 struct ft_record *out, size_t cap);

/*
 * End every flow with reason FT_END_FORCED (shutdown, end of input). Call
 * ft_expire() until it returns less than cap to collect them; they come in
 * no particular order (the slab's, not their deadlines'). Returns the
 * number of flows ended (flows kept empty over an active timeout included:
 * they end without a record); called again before the flush is over, it
 * carries the same flush on.
 */
size_t ft_flush(struct ft_table *t);

void ft_get_stats(const struct ft_table *t, struct ft_stats *out);

/*
 * Change the expiry timers of a live table (config reload): every flow is
 * re-slotted under the new deadlines, none is ended. O(max_flows). Returns
 * 0, -EINVAL for a zero idle/active timeout, -EBUSY while flushing.
 */
int ft_set_timeouts(struct ft_table *t, uint64_t idle_ns, uint64_t active_ns,
                    uint64_t tcp_end_grace_ns);

/*
 * For tests: bytes of the flow slab resident in memory (mincore), the
 * slab's mapping alone; -1 if that cannot be read.
 */
long long ft_test_slab_resident(const struct ft_table *t);
