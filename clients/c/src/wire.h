/* The wire format: serial arithmetic (section 3), the packet header and SACK blocks
 * (section 2) and frames (section 4). Pure functions over caller memory; every decoder
 * validates everything and never reads out of bounds, whatever the input. */
#ifndef Q_WIRE_H
#define Q_WIRE_H

#include "common.h"

/* Flags (2.1). */
enum {
    Q_SYN = 0x01, Q_ACK = 0x02, Q_FIN = 0x04, Q_RST = 0x08,
    Q_FEC = 0x10, Q_PSH = 0x20, Q_URG = 0x40,
    Q_KEY_PHASE = 0x80 /* protected packets: the low bit of the sender's key generation */
};

/* Frame types (4). */
enum {
    Q_FRAME_PADDING = 0x00, Q_FRAME_MESSAGE = 0x01, Q_FRAME_KEEPALIVE = 0x02,
    Q_FRAME_KEEPALIVE_ACK = 0x03, Q_FRAME_CLOSE = 0x04, Q_FRAME_PARITY = 0x05,
    Q_FRAME_ACK_FLOOR = 0x06, Q_FRAME_PATH_CHALLENGE = 0x07, Q_FRAME_PATH_RESPONSE = 0x08,
    Q_FRAME_SESSION = 0x09, Q_FRAME_REJECT = 0x0A, Q_FRAME_PING = 0x0B
};

/* MESSAGE (4): type, channel, mode, id u32, [offset u32, total u32], length u16, data */
#define Q_MESSAGE_OVERHEAD 9       /* a whole message */
#define Q_FRAGMENT_OVERHEAD 17     /* a fragment: mode bit 7 and offset / total */
#define Q_MODE_FRAGMENT 0x80
#define Q_MAX_REASON 512
#define Q_MAX_PARITY_SEQS 32
#define Q_PATH_DATA 8

/* ---------------------------------------------------------------- serial arithmetic (3) */

/* diff(a, b) in [-2^31, 2^31): RFC 1982 with the pair 2^31 apart ordered "a before b". */
static inline int64_t q_serial_diff(uint32_t a, uint32_t b) {
    return (int64_t)((uint32_t)(a - b + 0x80000000u)) - (int64_t)0x80000000u;
}
/* Expand a 32-bit wire value to the 64-bit number closest to largest + 1 (3.3). */
uint64_t q_expand(uint32_t wire, uint64_t largest);

/* ---------------------------------------------------------------------- the header (2) */

typedef struct q_header {
    uint8_t version, flags;
    const uint8_t *cid;
    uint32_t seq, ack;
    uint16_t payload_len;
} q_header;

typedef struct q_sack {
    uint32_t start, end; /* inclusive, wire values */
} q_sack;

/* Length >= 32 and the magic; 0 or -1. */
int q_header_decode(const uint8_t *d, size_t n, q_header *h);
void q_header_encode(uint8_t *out, uint8_t flags, const uint8_t cid[16], uint32_t seq,
                     uint32_t ack, uint16_t payload_len);
/* Split what follows the header into SACK blocks and payload (2.2, 2.3): 0 or -1. */
int q_split_body(const uint8_t *body, size_t n, uint16_t payload_len, q_sack sack[Q_MAX_SACK],
                 int *nsack, const uint8_t **payload);
/* A whole unprotected datagram (handshake packets): header, blocks and payload; 0 or -1. */
int q_decode_plain(const uint8_t *d, size_t n, q_header *h, q_sack sack[Q_MAX_SACK], int *nsack,
                   const uint8_t **payload);

/* ---------------------------------------------------------------------------- frames (4) */

typedef struct q_frame {
    uint8_t type;
    union {
        struct {
            uint8_t channel, mode;
            uint32_t id;
            uint8_t fragment;        /* mode bit 7: offset and total are on the wire */
            uint32_t offset, total;  /* a whole message: 0 and length */
            uint16_t length;
            const uint8_t *data;
        } msg;
        struct { uint32_t id; } keepalive;
        struct { uint32_t id, remaining_ms; } keepalive_ack;
        struct { uint16_t code, length; const uint8_t *reason; } close; /* CLOSE and REJECT */
        struct {
            uint32_t group;
            uint8_t m, index, k;
            const uint8_t *seqs; /* k big-endian u32 */
            uint16_t length;
            const uint8_t *shard;
        } parity;
        struct { uint32_t floor; } ack_floor;
        struct { const uint8_t *data; } path; /* 8 bytes */
        struct {
            const uint8_t *session_id; /* 16 bytes */
            uint8_t token_len;
            const uint8_t *token;
            uint32_t remaining_ms;
            uint8_t resumed;
        } session;
    } u;
} q_frame;

/* The next frame of payload[*pos..len): 1 with *f filled and *pos advanced, 0 at the end
 * (padding included), -1 malformed (the whole payload is then malformed). */
int q_frame_next(const uint8_t *payload, size_t len, size_t *pos, q_frame *f);
/* Validate a whole payload: 0 well formed, -1 malformed; *ack_eliciting says whether any
 * frame elicits an acknowledgement (every frame but padding and KEEPALIVE_ACK; PING does). */
int q_frames_check(const uint8_t *payload, size_t len, int *ack_eliciting);

/* Encoders write at out (the caller checked the room: the size is known in advance) and
 * return the bytes written. */
/* A whole message (9 + length bytes). */
size_t q_enc_message(uint8_t *out, uint8_t channel, uint8_t mode, uint32_t id,
                     const uint8_t *data, uint16_t length);
/* A fragment: bytes [offset, offset + length) of a message of `total` bytes (17 + length). */
size_t q_enc_fragment(uint8_t *out, uint8_t channel, uint8_t mode, uint32_t id, uint32_t offset,
                      uint32_t total, const uint8_t *data, uint16_t length);
size_t q_enc_u32_frame(uint8_t *out, uint8_t type, uint32_t value); /* KEEPALIVE, ACK_FLOOR */
size_t q_enc_keepalive_ack(uint8_t *out, uint32_t id, uint32_t remaining_ms);
size_t q_enc_code_reason(uint8_t *out, uint8_t type, uint16_t code, const uint8_t *reason,
                         uint16_t length); /* CLOSE, REJECT */
size_t q_enc_parity(uint8_t *out, uint32_t group, uint8_t m, uint8_t index, uint8_t k,
                    const uint32_t *seqs, const uint8_t *shard, uint16_t length);
size_t q_enc_path(uint8_t *out, uint8_t type, const uint8_t data[8]);
size_t q_enc_session(uint8_t *out, const uint8_t id[16], const uint8_t *token, uint8_t token_len,
                     uint32_t remaining_ms, uint8_t resumed);

#endif
