/*
 * udpsend.h - batched datagram sends (sendmmsg, UDP GSO) for the UDP
 * transport.
 *
 * Read verbatim as cffi cdef by exporters/encode_build.py (declarations only).
 *
 * Input
 *   `buf` holds `n` messages back to back; message i is `lens[i]` bytes.
 *   Both are owned by the caller and only read during the call. `fd` is a
 *   connected datagram socket; each message becomes one datagram.
 *
 * Segmentation offload (`*gso` = 1)
 *   A run of messages of one size (its last may be shorter), at most
 *   UDP_GSO_SEGS of them and UDP_GSO_BYTES in all, goes to the kernel as
 *   one send with UDP_SEGMENT (Linux >= 4.18): the kernel (or the NIC)
 *   cuts it into the same datagrams, with one trip through the stack
 *   instead of one per datagram. If the kernel refuses that (no checksum
 *   offload on the route's device, a message larger than the path MTU, an
 *   old kernel), *gso is set to 0 and the messages go out one datagram
 *   each, in this call and in the caller's next ones.
 *
 * Result
 *   udp_send_batch() returns the number of messages the kernel took
 *   (0..n); when it is below n, *err holds the errno that stopped the
 *   batch (EAGAIN, ECONNREFUSED, ...), otherwise 0. EINTR is retried.
 *   `groups` (n entries, may be NULL) receives, for each send the kernel
 *   took, how many messages it carried (1 without offload), and
 *   *ngroups how many sends that was: a refusal (ICMP) may come back once
 *   for a whole offloaded send, quoting its first datagram. Nothing is
 *   allocated.
 */

int udp_send_batch(int fd, const uint8_t *buf, const uint32_t *lens,
                   uint32_t n, int *gso, uint32_t *groups, uint32_t *ngroups,
                   int *err);
