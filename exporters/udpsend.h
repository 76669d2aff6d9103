/*
 * udpsend.h - batched datagram sends (sendmmsg) for the UDP transport.
 *
 * Read verbatim as cffi cdef by exporters/encode_build.py (declarations only).
 *
 * Input
 *   `buf` holds `n` messages back to back; message i is `lens[i]` bytes.
 *   Both are owned by the caller and only read during the call. `fd` is a
 *   connected datagram socket; each message becomes one datagram.
 *
 * Result
 *   udp_send_batch() returns the number of messages the kernel took
 *   (0..n); when it is below n, *err holds the errno that stopped the
 *   batch (EAGAIN, ECONNREFUSED, ...), otherwise 0. One sendmmsg() per
 *   UDP_BATCH_MAX messages; EINTR is retried. Nothing is allocated.
 */

int udp_send_batch(int fd, const uint8_t *buf, const uint32_t *lens,
                   uint32_t n, int *err);
