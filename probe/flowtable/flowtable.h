/*
 * flowtable.h - the flow engine's C API: parse -> hash -> update -> expire.
 *
 * This file is read verbatim as the cffi cdef by _build.py, so it holds only
 * declarations cffi understands: no #include, no #if, no macros with
 * expressions. Compile-time checks live in flowtable.c.
 *
 * Ownership and lifetime
 *   - ft_new() allocates everything the table will ever use (flow slab, hash
 *     buckets, timer wheel, pending-record buffer); nothing is allocated per
 *     packet or per record afterwards. ft_free() releases it all.
 *   - Packet data handed to ft_ingest() is only read during the call.
 *   - Records are copied into caller-owned arrays by ft_expire().
 *
 * Byte order
 *   - Addresses in struct ft_record are in network byte order (as on the
 *     wire); an IPv4 address occupies bytes 0..3, the rest is zero.
 *   - Every other integer is in host byte order.
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

/* Link types, as in pcap file headers (LINKTYPE_*) and libpcap (DLT_*). */
enum ft_linktype {
    FT_LINK_NULL = 0,          /* BSD loopback: 4-byte AF in host order */
    FT_LINK_ETHERNET = 1,
    FT_LINK_RAW_DLT12 = 12,    /* DLT_RAW on Linux */
    FT_LINK_RAW_DLT14 = 14,    /* DLT_RAW on OpenBSD */
    FT_LINK_RAW = 101,         /* LINKTYPE_RAW */
    FT_LINK_LOOP = 108,        /* OpenBSD loopback: 4-byte AF, network order */
    FT_LINK_LINUX_SLL = 113,
    FT_LINK_IPV4 = 228,
    FT_LINK_IPV6 = 229,
    FT_LINK_LINUX_SLL2 = 276
};

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

/* Why a flow ended: the values of IPFIX flowEndReason (IANA IE 136). */
enum ft_end_reason {
    FT_END_IDLE = 1,           /* idleTimeout */
    FT_END_ACTIVE = 2,         /* activeTimeout: a long flow, exported as deltas */
    FT_END_TCP = 3,            /* endOfFlowDetected: FIN both ways or RST */
    FT_END_FORCED = 4,         /* forcedEnd: shutdown or end of input */
    FT_END_RESOURCES = 5       /* lackOfResources: table full, oldest evicted */
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
};

/*
 * One packet of a batch, described by whoever read it (a file reader, a
 * TPACKET_V3 block walker, an AF_XDP descriptor walker). data points at the
 * link-layer header; caplen bytes are readable; wirelen is the length on the
 * wire. When vlan_valid is set, vlan_tci is an outer 802.1Q tag the kernel
 * stripped (TP_STATUS_VLAN_VALID); in-band tags that follow become the inner.
 */
struct ft_pkt {
    const uint8_t *data;
    uint32_t caplen;
    uint32_t wirelen;
    uint64_t ts_ns;
    uint32_t ifindex;          /* 0: use ft_config.ifindex */
    uint16_t vlan_tci;
    uint8_t vlan_valid;
    uint8_t pad;
};

/*
 * An exported flow record (a delta since the flow's previous record).
 * ICMP/ICMPv6: dst_port carries type << 8 | code (as NetFlow v5 does) and
 * src_port is 0. Non-first fragments carry ports 0 (they have none).
 */
struct ft_record {
    uint8_t src_addr[16];
    uint8_t dst_addr[16];
    uint64_t packets;
    uint64_t octets;           /* sum of IP total lengths */
    uint64_t first_ns;         /* capture time of the first packet */
    uint64_t last_ns;          /* capture time of the last packet */
    uint32_t ifindex;
    uint16_t src_port;
    uint16_t dst_port;
    uint16_t vlan;             /* outer VLAN id (0: untagged) */
    uint16_t inner_vlan;       /* inner VLAN id of QinQ (0: none) */
    uint8_t protocol;
    uint8_t tos;               /* IPv4 ToS / IPv6 traffic class */
    uint8_t tcp_flags;         /* OR of every packet's flags */
    uint8_t ip_version;        /* 4 or 6 */
    uint8_t ttl_min;           /* TTL / hop limit */
    uint8_t ttl_max;
    uint8_t end_reason;        /* enum ft_end_reason */
    uint8_t has_mac;           /* 1 when the link layer had MAC addresses */
    uint8_t src_mac[6];
    uint8_t dst_mac[6];
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
    uint64_t flows_created;
    uint64_t flows_expired[6]; /* indexed by enum ft_end_reason (0 unused) */
    uint64_t records_emitted;  /* records handed out by ft_expire */
    uint64_t packets_emitted;  /* sum of packets over emitted records */
    uint64_t octets_emitted;
    uint64_t flows_active;
    uint64_t flows_peak;
    uint64_t records_pending;
    uint64_t last_linktype_unsupported; /* the last unknown link type seen */
    uint64_t now_ns;           /* the table's clock */
};

struct ft_table;

/* Returns NULL with *err set to a negative errno (-EINVAL, -ENOMEM). */
struct ft_table *ft_new(const struct ft_config *cfg, int *err);
void ft_free(struct ft_table *t);

/* The approximate memory the table holds, and the bytes per flow slot. */
uint64_t ft_memory_bytes(const struct ft_table *t);
uint32_t ft_flow_entry_size(void);

/*
 * Parse and account packets pkts[0..n). Stops early when the pending record
 * buffer cannot take what one more packet may expire; *consumed says how
 * many packets were taken. Drain with ft_expire() and call again with the
 * rest. Returns 0, or -EINVAL on bad arguments.
 */
int ft_ingest(struct ft_table *t, int linktype, const struct ft_pkt *pkts,
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
 * ft_expire() until it returns less than cap to collect them. Returns the
 * number of flows ended.
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
