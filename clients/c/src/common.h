/* Small helpers every module uses: big-endian loads and stores, bounds, a growable buffer. */
#ifndef Q_COMMON_H
#define Q_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quantum.h"

#define Q_UNUSED(x) ((void)(x))

static inline uint16_t q_get16(const uint8_t *p) {
    return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}
static inline uint32_t q_get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void q_put16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void q_put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void q_put64(uint8_t *p, uint64_t v) {
    q_put32(p, (uint32_t)(v >> 32));
    q_put32(p + 4, (uint32_t)v);
}
static inline uint64_t q_get64(const uint8_t *p) {
    return (uint64_t)q_get32(p) << 32 | q_get32(p + 4);
}

static inline double q_min_d(double a, double b) { return a < b ? a : b; }
static inline double q_max_d(double a, double b) { return a > b ? a : b; }
static inline uint64_t q_min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t q_max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }
static inline size_t q_min_z(size_t a, size_t b) { return a < b ? a : b; }

/* A growable byte buffer: grows by doubling and never shrinks, so a steady state allocates
 * nothing. */
typedef struct q_buf {
    uint8_t *data;
    size_t len, cap;
} q_buf;

/* Make room for `extra` more bytes; 0 or QUANTUM_E_NOMEM. */
int q_buf_reserve(q_buf *b, size_t extra);
/* Append; returns the offset of the appended bytes, or (size_t)-1 when out of memory. */
size_t q_buf_append(q_buf *b, const void *data, size_t len);
void q_buf_free(q_buf *b);

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF), as Python decodes. */
int q_utf8_valid(const uint8_t *s, size_t len);

/* Constants of the protocol (docs/PROTOCOL.md). */
#define Q_HEADER_SIZE 32
#define Q_TAG_SIZE 16
#define Q_MAX_PAYLOAD 1424    /* header payload length bound: 1472 - 32 - 16 (2) */
#define Q_MAX_DATAGRAM 1472   /* MAX_DATAGRAM: the largest datagram a receiver accepts (2) */
#define Q_BASE_DATAGRAM 1200  /* BASE_DATAGRAM: what we send (no PMTU probing) */
#define Q_MAX_SACK 8
#define Q_CID_SIZE 16

#endif
