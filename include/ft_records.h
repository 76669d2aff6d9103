/*
 * ft_records.h - what crosses module boundaries: packets handed to the flow
 * engine (struct ft_pkt) and the flow records it hands out (struct
 * ft_record), with their link types and end reasons.
 *
 *   capture (driver/afpacket.c, afxdp.c, pcapfile*.c) --ft_pkt[]--> engine
 *   engine (probe/flowtable/) --ft_record[]--> encoder (exporters/encode.c)
 *
 * The driver, the engine and the exporters include this header; nothing in
 * it belongs to one of them. The engine's and the encoder's cffi builds read
 * it verbatim as cdef (before flowtable.h / encode.h), so it holds only
 * declarations cffi understands: no #include, no #if (hence no include
 * guard: include it once per translation unit, before flowtable.h or
 * encode.h, which use its types), no macros with expressions. The capture
 * modules take packet arrays as `void *` and compile against it only.
 *
 * Ownership and lifetime
 *   - Arrays of either struct belong to the caller of the function that
 *     fills or reads them; no callee keeps a pointer to one after it returns.
 *   - ft_pkt.data points into memory of the capture module that filled the
 *     array (an mmap'd ring block, an AF_XDP UMEM frame, a file mapping or
 *     an arena): valid until that module's release/next call (see
 *     driver/afpacket.h, afxdp.h, pcapfile.h). The engine reads it only
 *     during ft_ingest().
 *   - A struct ft_record holds no pointers: it is copied by value.
 *
 * Byte order
 *   - Packet bytes (ft_pkt.data) are as on the wire.
 *   - Addresses in struct ft_record are in network byte order (as on the
 *     wire); an IPv4 address occupies bytes 0..3, the rest is zero. MAC
 *     addresses are as on the wire.
 *   - Every other integer is in host byte order.
 *
 * Units
 *   - Times are nanoseconds since the Unix epoch (uint64_t, *_ns).
 *   - Lengths are bytes: caplen/wirelen of the frame from its link-layer
 *     header on; ft_record.octets is the sum of IP total lengths.
 *   - Counters are 64-bit.
 */

/* Link types, as in pcap file headers (LINKTYPE_*) and libpcap (DLT_*):
 * what ft_pkt.data starts with. */
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

/* Why a flow ended: the values of IPFIX flowEndReason (IANA IE 136). */
enum ft_end_reason {
    FT_END_IDLE = 1,           /* idleTimeout */
    FT_END_ACTIVE = 2,         /* activeTimeout: a long flow, exported as deltas */
    FT_END_TCP = 3,            /* endOfFlowDetected: FIN both ways or RST */
    FT_END_FORCED = 4,         /* forcedEnd: shutdown or end of input */
    FT_END_RESOURCES = 5       /* lackOfResources: table full, oldest evicted */
};

/* Where ft_record.app_* came from (nDPI application identification; with
 * DPI on every flow the engine accepts, any IP protocol, is inspected). */
enum ft_app_source {
    FT_APP_NONE = 0,           /* DPI off: no label */
    FT_APP_DETECTED = 1,       /* nDPI classified the flow from its packets */
    FT_APP_GUESSED = 2,        /* ndpi_detection_giveup's guess (packet limit
                                  reached, or a flow ended while undetected) */
    FT_APP_NO_STATE = 3,       /* the DPI pool was empty when the flow began */
    FT_APP_UNKNOWN = 4         /* inspected, and nothing (not even a guess) */
};

/*
 * One packet of a batch, described by whoever read it (a file reader, a
 * TPACKET_V3 block walker, an AF_XDP descriptor walker). data points at the
 * link-layer header; caplen bytes are readable; wirelen is the length on the
 * wire. When vlan_valid is set, vlan_tci is an outer 802.1Q tag the kernel
 * stripped (TP_STATUS_VLAN_VALID); in-band tags that follow become the inner.
 * 32 bytes (driver/pcapfile.h PF_PKT_SIZE; layout checked in pcapfile.c).
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
    /* Application (nDPI 4.2 protocol ids; both 0 when unknown). app_name is
     * nDPI's "Master.App" label (ndpi_protocol2name, e.g. "TLS.Google",
     * "DNS", "Unknown" when inspected without result), NUL-terminated; ""
     * when the flow was not inspected (FT_APP_NONE, FT_APP_NO_STATE). Both
     * unidirectional records of a conversation carry the same label.
     * JSON lines keys: applicationName, ndpiMasterProtocol, ndpiAppProtocol
     * (emitted when app_source is not FT_APP_NONE). */
    uint16_t app_master;       /* nDPI master protocol id (e.g. 91 TLS) */
    uint16_t app_id;           /* nDPI app protocol id (e.g. 126 Google) */
    uint8_t app_source;        /* enum ft_app_source */
    char app_name[47];
};
