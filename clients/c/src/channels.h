/* Channels and delivery modes (docs/PROTOCOL.md section 7): fragmentation on the way out,
 * reassembly and ordering on the way in. Sans-I/O.
 *
 * Outgoing messages are reference-counted: one reference while fragments remain to be cut,
 * one per reliable fragment in flight or waiting for retransmission; the last release frees
 * the message. So a 1 MiB message is copied once (at send) and fragments are cut from it
 * when a packet is built, never up front. */
#ifndef Q_CHANNELS_H
#define Q_CHANNELS_H

#include "common.h"

#define Q_STREAMS 1024 /* channel << 2 | mode */
#define Q_UNRELIABLE_WINDOW 1024

typedef struct q_out_msg {
    struct q_out_msg *next;           /* the channel's FIFO */
    struct q_out_msg *all_prev, *all_next; /* every live message, to free them at the end */
    uint32_t refs;
    uint32_t id, size;
    uint16_t count, next_index, frag_size;
    uint8_t channel, mode;
    uint8_t data[];
} q_out_msg;

typedef struct q_frag_ref {
    q_out_msg *msg;
    uint16_t index;
} q_frag_ref;

typedef struct q_sender {
    uint32_t next_id[Q_STREAMS];
    q_out_msg *head[256], *tail[256];
    uint8_t active[256]; /* channels with queued messages, round-robin ring */
    uint32_t active_start, active_count;
    q_frag_ref *retx;    /* ring of fragments to retransmit, oldest first */
    uint32_t retx_head, retx_len, retx_cap;
    q_out_msg *all;
    uint64_t pending_bytes;
} q_sender;

q_sender *q_sender_new(void);
void q_sender_free(q_sender *s);
/* Queue a copy of a message; 0 with *id set, or QUANTUM_E_INVALID / E_TOO_LARGE / E_NOMEM.
 * frag_size: data bytes per fragment (>= 17 so that 1 MiB fits 65535 fragments). */
int q_sender_queue(q_sender *s, uint8_t channel, uint8_t mode, const void *data, size_t len,
                   uint16_t frag_size, uint32_t *id);
static inline int q_sender_has_pending(const q_sender *s) {
    return s->retx_len || s->active_count;
}
/* The next fragment whose MESSAGE frame fits in `room` bytes: 1 with *ref (holding one
 * reference the caller must keep or release), or 0 if none fits. */
int q_sender_pop(q_sender *s, size_t room, q_frag_ref *ref);
/* Fragment data of a reference. */
static inline const uint8_t *q_frag_data(const q_frag_ref *r, uint16_t *len) {
    const q_out_msg *m = r->msg;
    size_t start = (size_t)r->index * m->frag_size;
    size_t n = m->count == 1 ? m->size : m->size - start;
    if (n > m->frag_size && m->count != 1)
        n = m->frag_size;
    *len = (uint16_t)n;
    return m->data + start;
}
/* A reliable fragment whose packet was lost goes out again before new data (the reference
 * moves to the retransmission queue); 0 or E_NOMEM. */
int q_sender_requeue(q_sender *s, q_frag_ref ref);
void q_sender_release(q_sender *s, q_out_msg *m);

/* ----------------------------------------------------------------------------- receive */

typedef struct q_receiver q_receiver;

/* A whole message. If `owned` is not NULL it is the message (malloc'd) and becomes the
 * callee's; otherwise data is borrowed for the duration of the call. 0, or E_NOMEM. */
typedef int (*q_deliver_fn)(void *ctx, uint8_t channel, uint8_t mode, const uint8_t *data,
                            size_t len, uint8_t *owned);

q_receiver *q_receiver_new(size_t budget);
void q_receiver_free(q_receiver *r);
/* Take one MESSAGE frame. 0; -1 a protocol violation (*why says what); E_NOMEM. */
int q_receiver_on_frame(q_receiver *r, uint8_t channel, uint8_t mode, uint32_t id,
                        uint16_t index, uint16_t count, const uint8_t *data, uint16_t len,
                        q_deliver_fn deliver, void *ctx, const char **why);
uint64_t q_receiver_duplicates(const q_receiver *r);
uint64_t q_receiver_stale(const q_receiver *r);
size_t q_receiver_buffered(const q_receiver *r);

#endif
