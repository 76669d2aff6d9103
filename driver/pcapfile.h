/*
 * pcapfile.h - capture-file reader: fills caller-owned struct ft_pkt arrays,
 * one call per batch.
 *
 * This file is read verbatim as the cffi cdef by driver/pcapfile_build.py: no
 * #include, no #if, no macros. Packet arrays are passed as `void *` (they are
 * `struct ft_pkt *`, see include/ft_records.h) so that this module's
 * ffi does not declare the flow engine's types; callers pass the array's
 * address from the flow table's ffi.
 *
 * Two readers behind one API
 *   - mmap: classic pcap files (magic a1b2c3d4 / a1b23c4d in either byte
 *     order) are mapped read-only in windows (64 MiB, or the byte count in
 *     the environment variable FLOWPROBE_PCAP_WINDOW, k/m/g suffix allowed;
 *     tests use small ones), the next window read ahead. A
 *     record that straddles a window's end gets a new window mapped at its
 *     own page, large enough to hold it whole. ft_pkt.data points straight
 *     into the mapping (zero copy). Every record header is validated against
 *     the remaining file before use; nothing past the file is ever read.
 *     A file larger than one window of 4 MiB or more is walked by a reader
 *     thread, up to 4 batches (of about the first call's cap) ahead of the
 *     caller, who gets a copy of the next walked batch's ft_pkt array;
 *     smaller files are walked in the caller's thread. At most 17 windows
 *     are mapped: the current one and those that batches handed out or
 *     walked ahead point into, so memory stays bounded whatever the
 *     file's size.
 *   - libpcap: pcapng, anything else libpcap reads, non-regular files, the
 *     few classic-pcap variants whose semantics only libpcap implements
 *     (Kuznetzov records, byte-swapped pseudo-headers, huge-snaplen link
 *     types), and force_libpcap. Each packet is copied into an arena the
 *     reader owns.
 *   Streams: the path "-" is stdin; it, a FIFO and any other non-regular
 *   file are read once, in order, by libpcap. pf_open() decides with one
 *   stat() of the path and opens it once (opening a FIFO twice would use up
 *   its writer on the first open and wait for ever on the second).
 *   Both readers deliver identical batches for a classic pcap file,
 *   following libpcap's rules: version 2.0-2.2 (and 543.0) records have
 *   caplen/len swapped, 2.3 maybe; a header snaplen of 0 or above 262144
 *   means 262144; a caplen above the snaplen is clipped to it (counted in
 *   clipped_records, the record is still skipped whole); a caplen above
 *   262144 or beyond the end of file is a corrupt/truncated record.
 *
 * Ownership and lifetime
 *   - pf_open() allocates the reader; pf_close() releases everything.
 *   - The pkts array belongs to the caller and is only written.
 *   - ft_pkt.data pointers (both readers, as libpcap's): valid until the
 *     next pf_next_batch() or pf_close(). The mmap reader unmaps windows
 *     that earlier batches pointed into once the next call has started.
 *   - The mmap reader sees the file as it was at pf_open() (a file still
 *     being written ends at its size then). A file that SHRINKS while it
 *     is read (another process truncates it) does not kill the process:
 *     the reader checks the size (fstat) before each batch and window, and
 *     a SIGBUS handler (installed at the first mmap open, chained to the
 *     one before it) maps a zero page over a faulting page of the reader's
 *     own mappings and flags the reader. Every record before the cut is
 *     delivered, then -ESTALE. Packets of the batch in flight at the cut
 *     (already handed out, read by the caller afterwards) may read as
 *     zeros where their bytes were cut off. Any other SIGBUS goes to the
 *     previous handler (default: the process dies).
 *
 * Byte order and fields
 *   - All integers handed out are in host byte order (file byte order is
 *     undone); packet bytes are as captured.
 *   - ts_ns: nanoseconds since the Unix epoch; the seconds field of a classic
 *     record is unsigned 32-bit. ifindex, vlan_tci, vlan_valid are 0 (files
 *     carry no stripped tags; pcapng interface ids are not exposed by libpcap).
 *
 * Link type
 *   - pf_linktype() is a LINKTYPE_* value, fixed for the whole file, as
 *     32 bits: a classic header's 16-bit link type when its upper 16 bits
 *     are zero or a well-formed FCS annotation (LT_RESERVED1 bits, mask
 *     0x03ff0000, clear; the annotation is dropped), else the header's
 *     whole 32-bit field (0xdeadbeef, not 0xbeef: an unknown link type is
 *     reported as it is written). pcapng's IDB link type is a 16-bit field,
 *     reported whole. The
 *     libpcap reader maps the DLTs that differ back (DLT_RAW 12 -> 101,
 *     DLT_ATM_RFC1483 11 -> 100, ...), so both readers report the file's
 *     value. libpcap 1.10 refuses a pcapng file whose interfaces have
 *     different link types (or a later section with another one): the
 *     batch ends before that block and the next call reports -EOPNOTSUPP
 *     ("an interface has a type ... different from the type of the first
 *     interface"). mergecap writes every IDB up front, so such a file
 *     usually yields no packet at all.
 *
 * Errors
 *   - Negative errno. pf_open(): -ENOENT, -EACCES, ... from open(2);
 *     -EINVAL for an unreadable format (errbuf says why); -ENOMEM.
 *   - pf_next_batch(): returns the count of packets written, 0 at the end of
 *     file. A corrupt or truncated record ends the batch: the packets before
 *     it are returned first, the next call returns -EBADMSG (and keeps
 *     returning it); truncated_records counts it (the mmap reader: from
 *     that call on). pf_errmsg() says why.
 *     -ESTALE likewise when the file shrank while being read (mmap reader;
 *     counted in truncated_records too).
 *   - Nothing prints, nothing exits.
 */

enum pf_const {
    PF_ERRBUF_SIZE = 256,
    PF_PKT_SIZE = 32,              /* sizeof(struct ft_pkt), checked in C */
    PF_MAX_CAPLEN = 262144         /* libpcap's MAXIMUM_SNAPLEN */
};

struct pf_stats {
    uint64_t packets;              /* packets handed out */
    uint64_t cap_bytes;            /* sum of caplen handed out */
    uint64_t wire_bytes;           /* sum of wirelen handed out */
    uint64_t truncated_records;    /* corrupt/cut records (reading stops) */
    uint64_t clipped_records;      /* caplen > snaplen, clipped (mmap reader
                                      only: libpcap clips silently) */
    uint64_t batches;              /* non-empty batches handed out */
};

struct pf_reader;

/* Open path. force_libpcap != 0 selects libpcap even for classic pcap.
 * Returns NULL with *err (negative errno) and errbuf (PF_ERRBUF_SIZE bytes,
 * NUL-terminated) set. */
struct pf_reader *pf_open(const char *path, int force_libpcap, char *errbuf,
                          int *err);
void pf_close(struct pf_reader *r);

uint32_t pf_linktype(const struct pf_reader *r);
int pf_snaplen(const struct pf_reader *r);       /* effective snaplen */
int pf_is_mmap(const struct pf_reader *r);
/* Windows the mmap reader has mapped so far (1 after pf_open, 0 for the
 * libpcap reader). */
uint64_t pf_windows(const struct pf_reader *r);

/* Fill pkts[0..cap) (a struct ft_pkt array, cap > 0, else -EINVAL).
 * See "Errors" above. A batch may hold fewer than cap packets before the
 * end of file (libpcap arena full; mmap reader: 17 windows mapped, or the
 * rest of a batch its reader thread walked: the first call's cap, 1024 to
 * 65536 packets). Blocks until the reader thread has a batch ready. */
long pf_next_batch(struct pf_reader *r, void *pkts, size_t cap);

void pf_stats(const struct pf_reader *r, struct pf_stats *out);
/* The last error's text ("" if none); valid until pf_close(). */
const char *pf_errmsg(const struct pf_reader *r);

/* Tests only: the mmap reader no longer checks the file's size, as if
 * every cut came right after a check (the SIGBUS path, deterministic). */
void pf_test_skip_fstat(struct pf_reader *r);
/* Tests only: 1 while the mmap reader's reader thread runs (see
 * pcapfile_mmap.c: files larger than one window of 4 MiB or more). */
int pf_test_reader_thread(const struct pf_reader *r);
