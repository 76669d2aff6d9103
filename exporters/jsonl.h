/*
 * jsonl.h - flow records as JSON lines, formatted and written in C.
 *
 * This file is read verbatim as the cffi cdef by exporters/_build.py: only
 * declarations cffi understands (no #include, no #if, no macros).
 *
 * Format (the contract of `replay --json` and `run --json`)
 *   One JSON object per record and line, no spaces, keys in this order, as
 *   Python's json.dumps(probe.flowtable.table.record_to_dict(r),
 *   separators=(",", ":")) writes them (a test compares the two byte for
 *   byte): sourceIPv4Address/destinationIPv4Address (ip_version 4) or
 *   sourceIPv6Address/destinationIPv6Address (RFC 5952 text, as Python's
 *   ipaddress: lower-case hex, the longest run of two or more zero groups,
 *   the first of equal runs, as "::", no dotted IPv4 tail),
 *   sourceTransportPort, destinationTransportPort, protocolIdentifier,
 *   ipClassOfService, packetDeltaCount, octetDeltaCount,
 *   flowStartMilliseconds, flowEndMilliseconds, flowEndReason, ipVersion,
 *   minimumTTL, maximumTTL, ingressInterface; then only when they apply:
 *   tcpControlBits (protocol 6), icmpTypeCodeIPv4 (protocol 1, IPv4) or
 *   icmpTypeCodeIPv6 (protocol 58, IPv6), vlanId (non-zero),
 *   dot1qCustomerVlanId (non-zero), sourceMacAddress and
 *   destinationMacAddress (has_mac; "aa:bb:cc:dd:ee:ff"); applicationName
 *   (nDPI's label, e.g. "TLS.Google", JSON-escaped), ndpiMasterProtocol and
 *   ndpiAppProtocol (nDPI ids) when app_source is not FT_APP_NONE.
 *
 * Input
 *   `records` is the address of an array of `struct ft_record` (see
 *   probe/flowtable/flowtable.h) owned by the caller and only read during
 *   the call; it crosses cffi modules as a plain address (uintptr_t).
 *
 * Output and errors
 *   jsonl_write() formats into the caller's buffer buf[0..cap) and writes
 *   to fd in chunks of whole lines of at most `chunk` bytes (a pipe write
 *   of at most PIPE_BUF bytes is atomic, so readers sharing stdout never
 *   interleave inside a line). cap must be at least chunk + JSONL_LINE_MAX.
 *   EINTR is retried; EAGAIN waits in poll(). Returns 0, or a negative errno
 *   (-EINVAL for a bad buffer; a failed write: lines before it are out).
 *   Nothing is allocated.
 */

enum { JSONL_LINE_MAX = 1024 };   /* longer than any line (test-checked) */

/* Format one record at out (JSONL_LINE_MAX bytes available), newline
 * included, no NUL; returns the line's length. */
size_t jsonl_format(uintptr_t record, char *out);

int jsonl_write(int fd, uintptr_t records, size_t n, char *buf, size_t cap,
                size_t chunk);
