/* Forward error correction (docs/PROTOCOL.md section 9): a systematic Reed-Solomon code over
 * GF(2^8) whose parity is byte-identical to zfec's (the Vandermonde construction of Luigi
 * Rizzo's fec.c, which zfec wraps), so both ends can recover each other's lost packets. */
#ifndef Q_FEC_H
#define Q_FEC_H

#include "common.h"

#define Q_FEC_MAX_K 32
#define Q_FEC_MAX_M 16
#define Q_FEC_SHARD_MAX (2 + Q_MAX_PAYLOAD)

typedef struct q_gf {
    uint8_t exp[510]; /* alpha^i for 0 <= i < 510: products need no modulo */
    uint8_t log[256];
} q_gf;

void q_gf_init(q_gf *gf);
/* The m parity rows (m x k, row-major) of zfec's encoding matrix for (k, k + m). */
int q_fec_parity_rows(const q_gf *gf, int k, int m, uint8_t *rows);
/* parity[i] = sum_j rows[i][j] * data[j] over `size` bytes. */
void q_fec_encode_blocks(const q_gf *gf, const uint8_t *rows, int k, int m,
                         const uint8_t *const *data, size_t size, uint8_t *const *parity);

/* ------------------------------------------------------------------------------ sender */

typedef struct q_fec_encoder {
    q_gf gf;
    int k, m;
    uint32_t next_group;
    int pending;                         /* data packets in the open group */
    uint64_t pns[Q_FEC_MAX_K];
    uint16_t lens[Q_FEC_MAX_K];
    uint8_t payloads[Q_FEC_MAX_K][Q_FEC_SHARD_MAX]; /* padded data blocks */
    /* the parity of the last closed group, sent one shard per packet before more data */
    int out_count, out_next, out_k;
    uint32_t out_group;
    uint32_t out_seqs[Q_FEC_MAX_K];
    uint16_t out_size;
    uint8_t shards[Q_FEC_MAX_M][Q_FEC_SHARD_MAX];
    int rows_k, rows_m;                  /* the cached matrix's shape */
    uint8_t rows[Q_FEC_MAX_M * Q_FEC_MAX_K];
} q_fec_encoder;

q_fec_encoder *q_fec_encoder_new(int k, int m);
/* Add a data packet's payload; closes the group (parity ready) when it holds k. */
void q_fec_encoder_add(q_fec_encoder *e, uint64_t pn, const uint8_t *payload, size_t len);
/* The sender ran out of data: close the partial group now (min(m, ceil(m k'/k) + 1) shards). */
void q_fec_encoder_flush(q_fec_encoder *e);
static inline int q_fec_parity_pending(const q_fec_encoder *e) {
    return e && e->out_next < e->out_count;
}
int q_fec_partial_parity(int k, int m, int count);

/* ---------------------------------------------------------------------------- receiver */

#define Q_FEC_CACHE 256
#define Q_FEC_GROUPS 32
#define Q_FEC_RECOVERED 32

typedef struct q_fec_group {
    int used, done;
    uint32_t gid;
    int k, m;
    uint64_t pns[Q_FEC_MAX_K];
    uint16_t size;                   /* padded shard length */
    uint32_t have_parity;            /* bit per parity index */
    uint8_t *parity;                 /* Q_FEC_MAX_M x Q_FEC_SHARD_MAX, allocated on first use */
} q_fec_group;

typedef struct q_fec_recovered {
    uint64_t pn;
    uint16_t len;
    uint8_t data[Q_MAX_PAYLOAD];
} q_fec_recovered;

typedef struct q_fec_decoder {
    q_gf gf;
    struct {
        uint64_t pn;
        uint16_t len;
        uint8_t data[Q_MAX_PAYLOAD];
    } cache[Q_FEC_CACHE];
    q_fec_group groups[Q_FEC_GROUPS];
    uint32_t floor;                  /* group ids below were forgotten: their parity is ignored */
    int has_floor;
    /* rebuilt packets waiting to be processed (a queue, so processing one may add more) */
    q_fec_recovered out[Q_FEC_RECOVERED];
    int out_head, out_len;
    uint64_t recovered;
} q_fec_decoder;

q_fec_decoder *q_fec_decoder_new(void);
void q_fec_decoder_free(q_fec_decoder *d);
/* A received data packet (PSH): 0, or -1 a violation (*why). */
int q_fec_on_data(q_fec_decoder *d, uint64_t pn, const uint8_t *payload, size_t len,
                  const char **why);
/* A received parity shard; pns are the k expanded data packet numbers. 0 or -1 (*why). */
int q_fec_on_parity(q_fec_decoder *d, uint32_t gid, int m, int index, const uint64_t *pns,
                    int k, const uint8_t *shard, size_t len, const char **why);
/* Pop one rebuilt packet: 1 with *out pointing into the decoder (valid until the next call
 * into it), or 0. */
int q_fec_next_recovered(q_fec_decoder *d, q_fec_recovered *out);

#endif
