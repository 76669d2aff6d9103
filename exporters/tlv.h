/*
 * tlv.h - flow records as nDPI TLV, the payload ntopng reads over ZeroMQ.
 *
 * Read verbatim as part of the cffi cdef of the encoder module (with
 * encode.h): only declarations cffi understands.
 *
 * Format (nDPI's serializer, ndpi_serialization_format_tlv; unchanged from
 * nDPI 4.2 to today's): a payload starts with the bytes 01 01 (version 1,
 * format TLV); then, per record, items and an end-of-record byte 01. An
 * item is a type byte (key_type << 4 | value_type), the key, the value.
 * Keys are the numeric NetFlow v9 / nProbe field ids; unsigned integers
 * (keys and values) are written big-endian in the smallest of u8 (type 2),
 * u16 (3), u32 (4), u64 (5); a string (type 11) is a big-endian u16 length
 * and its bytes, no NUL.
 *
 * What a field list says
 *   Each struct tlv_field names a record field (enum enc_field_id of
 *   encode.h), how to write it (enum tlv_kind) and its key, one for IPv4
 *   and one for IPv6 records (the same id for fields that do not depend on
 *   the IP version; 0 leaves the field out for that version). Python builds
 *   the list (exporters/ntopng.py); the same list names the fields of the
 *   JSON payload, so the two formats cannot disagree.
 *
 * Input, output, ownership
 *   `records` is the address of a caller-owned array of struct ft_record,
 *   only read during the call. Payloads go into the caller-owned buf[0..cap).
 *   Nothing is allocated; nothing prints.
 */

enum tlv_kind {
    TLV_K_UINT = 0,            /* the field's integer value, shrunk */
    TLV_K_ADDR = 1,            /* IPv4 dotted quad / IPv6 text (inet_ntop) */
    TLV_K_MAC = 2,             /* "aa:bb:cc:dd:ee:ff"; left out without MACs */
    TLV_K_EPOCH_S = 3,         /* a START_MS/END_MS field as Unix seconds */
    TLV_K_CONST_STR = 4,       /* tlv_layout.const_str (e.g. the exporter address) */
    TLV_K_NONZERO = 5,         /* like TLV_K_UINT, left out when 0 (VLAN ids) */
    TLV_K_L7_PROTO = 6         /* the nDPI ids as the string "master.app" (e.g.
                                * "91.126"), as nProbe sends L7_PROTO; left
                                * out when the record has no application
                                * (app_source FT_APP_NONE); `field` unused */
};

struct tlv_field {
    uint32_t key4;             /* key in IPv4 records (0: not written) */
    uint32_t key6;             /* key in IPv6 records (0: not written) */
    uint16_t field;            /* enum enc_field_id */
    uint16_t kind;             /* enum tlv_kind */
};

struct tlv_layout {
    const struct tlv_field *fields;
    uint32_t nfields;          /* at most 64 */
    uint32_t max_records;      /* per payload; 0: as many as fit */
    const char *const_str;     /* the TLV_K_CONST_STR value (NUL-terminated), or NULL */
};

/*
 * Encode records[0..n) into one payload in buf[0..cap): the 2-byte header,
 * then whole records until the next one would not fit or max_records are
 * written. Fills *res (bytes, consumed = encoded, sets = 1 when a payload
 * was started). Returns 0, or -EINVAL for a bad field list, or -ENOSPC when
 * not even one record fits into cap (the caller's buffer is too small).
 */
int tlv_encode(const struct tlv_layout *lay, uintptr_t records, size_t n,
               uint8_t *buf, size_t cap, struct enc_result *res);
