/*
 * encode.h - the template-driven record encoder of the exporters.
 *
 * This file is read verbatim as the cffi cdef by exporters/encode_build.py,
 * after include/ft_records.h (which declares struct ft_record): only
 * declarations cffi understands (no #include, no #if, no macros).
 *
 * Model
 *   A template is an ordered array of struct enc_field: (record field, length
 *   on the wire). Python builds it from the IANA registry (exporters/templates.py);
 *   the same array yields the template record (IE ids, Python side) and drives
 *   this encoder, so template and data layout cannot disagree.
 *
 * Input
 *   `records` is the address of an array of `struct ft_record` (see
 *   include/ft_records.h) owned by the caller and only read during the
 *   call. It crosses cffi modules as a plain address (uintptr_t).
 *
 * Output
 *   Sets are written into the caller-owned buffer `buf[0..cap)`, in network
 *   byte order. Nothing is allocated; nothing prints.
 *
 * Numbers
 *   An unsigned field encoded shorter than its source (reduced-size encoding,
 *   e.g. 64-bit counters in 4 bytes for NetFlow v5) saturates at the largest
 *   value that fits; each saturated record is counted in enc_result.clamped.
 *
 * Time
 *   ENC_F_START_MS/END_MS are absolute ms since the Unix epoch (IPFIX
 *   dateTimeMilliseconds); ENC_F_START_UPTIME/END_UPTIME are ms since the
 *   virtual boot time `boot_ms` given by the caller (NetFlow v5/v9
 *   First/LastSwitched), truncated to 32 bits.
 *
 * Strings
 *   ENC_F_APP_NAME is the one string: the record's label (ASCII, at most 46
 *   bytes, NUL-terminated in the record). Fixed length (NetFlow v9): copied
 *   up to the field's length and padded with NULs, "" (all NULs) without a
 *   label. ENC_VARLEN (IPFIX): a length byte and the label, no NUL; a
 *   record without a label takes one byte (length 0).
 */

/* The ft_record fields an encoder can emit. */
enum enc_field_id {
    ENC_F_ZERO = 0,            /* padding / unused field: zeros */
    ENC_F_SRC_ADDR4 = 1,
    ENC_F_DST_ADDR4 = 2,
    ENC_F_SRC_ADDR6 = 3,
    ENC_F_DST_ADDR6 = 4,
    ENC_F_SRC_PORT = 5,
    ENC_F_DST_PORT = 6,        /* ICMP: type << 8 | code, as v5 and nfdump do */
    ENC_F_PROTOCOL = 7,
    ENC_F_TOS = 8,
    ENC_F_TCP_FLAGS = 9,
    ENC_F_PACKETS = 10,
    ENC_F_OCTETS = 11,
    ENC_F_START_MS = 12,
    ENC_F_END_MS = 13,
    ENC_F_START_UPTIME = 14,
    ENC_F_END_UPTIME = 15,
    ENC_F_IFINDEX = 16,
    ENC_F_VLAN = 17,
    ENC_F_INNER_VLAN = 18,
    ENC_F_TTL_MIN = 19,
    ENC_F_TTL_MAX = 20,
    ENC_F_END_REASON = 21,
    ENC_F_IP_VERSION = 22,
    ENC_F_ICMP_TYPE_CODE = 23, /* type << 8 | code for ICMP/ICMPv6, else 0 */
    ENC_F_SRC_MAC = 24,
    ENC_F_DST_MAC = 25,
    /* Application (nDPI; zero when the record has none, see ft_records.h) */
    ENC_F_APP_NAME = 26,       /* app_name as a fixed-length string: the label,
                                * NUL-padded to the field's length (1..46) */
    ENC_F_APP_MASTER = 27,     /* nDPI master protocol id */
    ENC_F_APP_ID = 28,         /* nDPI app protocol id (the most specific one) */
    ENC_F_COUNT = 29
};

struct enc_field {
    uint16_t field;            /* enum enc_field_id */
    uint16_t length;           /* bytes on the wire, or ENC_VARLEN */
};

/* enc_field.length of a variable-length field (IPFIX, RFC 7011 section 7:
 * one length byte, then the value; only ENC_F_APP_NAME, whose label is at
 * most 46 bytes, so the short form always fits). */
enum { ENC_VARLEN = 65535 };

/*
 * How records are framed. set_id4/set_id6 are the data-set ids (template ids)
 * for IPv4 and IPv6 records; 0 means records of that version are not
 * exportable (NetFlow v5: IPv6) and are skipped and counted. When set_hdr is
 * 0, records are written back to back with no set header (NetFlow v5).
 * set_align pads each set to a multiple of it (4 for v9, 1 for IPFIX).
 */
struct enc_layout {
    const struct enc_field *fields4;
    const struct enc_field *fields6;
    uint32_t nfields4;
    uint32_t nfields6;
    uint16_t set_id4;
    uint16_t set_id6;
    uint16_t set_hdr;          /* 1: 4-byte set headers; 0: none */
    uint16_t set_align;        /* 1 or 4 */
    uint32_t max_records;      /* per call; 0: unlimited */
    uint64_t boot_ms;          /* virtual boot time for *_UPTIME fields */
};

struct enc_result {
    uint64_t bytes;            /* bytes written into buf */
    uint64_t consumed;         /* records taken from the input (incl. skipped) */
    uint64_t encoded;          /* data records written */
    uint64_t skipped;          /* not exportable with this layout */
    uint64_t clamped;          /* records with a saturated field */
    uint64_t sets;             /* set headers written */
    uint64_t messages;         /* enc_encode_msgs(): messages written */
};

/* Bytes one record of this field list takes on the wire (a variable-length
 * field counted as its length byte alone: the shortest record). */
uint32_t enc_record_length(const struct enc_field *fields, uint32_t n);

/*
 * Encode records[0..n) as data sets into buf[0..cap), stopping before the
 * first record that does not fit (or after max_records). Returns 0 and fills
 * *res, or -EINVAL on bad arguments (unknown field, bad length).
 * A record that cannot fit even into an empty buffer makes the call consume
 * nothing: the caller's cap is too small (checked at set-up).
 */
int enc_encode(const struct enc_layout *lay, uintptr_t records, size_t n,
               uint8_t *buf, size_t cap, struct enc_result *res);

/*
 * Whole messages: header, data sets and records, back to back.
 *
 * enc_encode_msgs() encodes records[0..n) into at most max_msgs messages of
 * at most mtu bytes each, written one after the other into buf (which holds
 * max_msgs * mtu bytes): message i takes lens[i] bytes and carries nrecs[i]
 * data records. Each message holds records of one IP version, IPv4 messages
 * first, each version's records in input order: the messages of a version
 * then have one size but for the last (a run the UDP transport sends with
 * segmentation offload). A chunk of records that are all skipped makes no
 * message.
 * The header fields that stay the same for the whole call are in *hdr; the
 * sequence number is per message (IPFIX and NetFlow v5: data records sent
 * before the message; NetFlow v9: messages sent before it) and hdr->sequence
 * is left at the next message's. Template messages come in as *refresh
 * (may be NULL) says, with nrecs 0. *res holds the totals. It stops early
 * (res->consumed < n) only at max_msgs, or at a record too large for an
 * empty message (consumed 0: the caller's mtu is too small). Returns 0, or
 * -EINVAL as enc_encode().
 */
struct enc_header {
    uint16_t version;          /* 5, 9 or 10: the header's layout */
    uint16_t engine;           /* v5: engine_type << 8 | engine_id */
    uint16_t sampling;         /* v5: sampling mode << 14 | interval */
    uint32_t domain_id;        /* IPFIX observation domain, v9 source id */
    uint32_t unix_secs;        /* export time */
    uint32_t unix_nsecs;       /* v5 */
    uint32_t uptime_ms;        /* v5, v9: sysUptime */
    uint64_t sequence;         /* in: the first message's; out: the next one's */
};

/* Header bytes of a version (5: 24, 9: 20, 10: 16), 0 for another. */
uint32_t enc_header_length(uint16_t version);

/*
 * Template refresh by count, inside a call: after every `every` data
 * messages (counting on from `since`), a template message (header, then
 * `body`: the template and options template sets, `count` records for the
 * v9 header) is written as the next message, when the call has room for
 * it (max_msgs); otherwise the caller sends it. `since` is left at the
 * data messages after the last template message, `sent` at the template
 * messages written by the call. body NULL or every 0: none is written,
 * `since` still counts.
 */
struct enc_refresh {
    const uint8_t *body;
    uint32_t body_len;
    uint32_t count;
    uint32_t every;
    uint32_t since;            /* in/out */
    uint32_t sent;             /* out */
};

int enc_encode_msgs(const struct enc_layout *lay, struct enc_header *hdr,
                    uintptr_t records, size_t n, uint8_t *buf, size_t mtu,
                    uint32_t max_msgs, uint32_t *lens, uint32_t *nrecs,
                    struct enc_refresh *refresh, struct enc_result *res);

/* min(first_ns) and max(last_ns) over records[0..n), in ms; (0, 0) if n == 0. */
void enc_time_span(uintptr_t records, size_t n, uint64_t *min_first_ms,
                   uint64_t *max_last_ms);
