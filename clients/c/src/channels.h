/* Channels and delivery modes (docs/PROTOCOL.md sections 4 and 7): byte-offset fragments on
 * the way out, range-union reassembly and ordering on the way in. Sans-I/O.
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
    uint32_t next_offset;             /* the first byte not cut yet */
    uint8_t channel, mode;
    uint8_t data[];
} q_out_msg;

/* One MESSAGE frame's worth of a message: the whole message (9 + len bytes on the wire), or
 * the fragment [offset, offset + len) (17 + len bytes, section 4). */
typedef struct q_frag_ref {
    q_out_msg *msg;
    uint32_t offset;
    uint16_t len;
    uint8_t whole;
} q_frag_ref;

static inline size_t q_frag_frame_size(const q_frag_ref *r) {
    return (r->whole ? 9u : 17u) + r->len;
}

typedef struct q_sender {
    uint32_t next_id[Q_STREAMS];
    q_out_msg *head[256], *tail[256];
    uint8_t active[256]; /* channels with queued messages, round-robin ring */
    uint32_t active_start, active_count;
    q_frag_ref *retx;    /* ring of fragments to retransmit, oldest first */
    uint32_t retx_head, retx_len, retx_cap;
    q_out_msg *all;
    uint64_t pending_bytes;
    uint64_t unsendable; /* unreliable messages larger than any packet could carry */
} q_sender;

q_sender *q_sender_new(void);
void q_sender_free(q_sender *s);
/* Queue a copy of a message; 0 with *id set, or QUANTUM_E_INVALID / E_TOO_LARGE (above
 * 1 MiB, or an unreliable one above QUANTUM_MAX_UNRELIABLE) / E_NOMEM. */
int q_sender_queue(q_sender *s, uint8_t channel, uint8_t mode, const void *data, size_t len,
                   uint32_t *id);
static inline int q_sender_has_pending(const q_sender *s) {
    return s->retx_len || s->active_count;
}
/* The next MESSAGE frame that fits in `room` bytes: 1 with *ref (holding one reference the
 * caller must keep or release), or 0 if none fits. Fragments are cut as large as `room`
 * allows; a message that would fit whole in an empty packet (`full_room` bytes) is not
 * fragmented but waits for one, and unreliable messages are never fragmented. */
int q_sender_pop(q_sender *s, size_t room, size_t full_room, q_frag_ref *ref);
static inline const uint8_t *q_frag_data(const q_frag_ref *r) { return r->msg->data + r->offset; }
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
/* Take one MESSAGE frame: a whole message (fragment 0), or the bytes [offset, offset + len)
 * of a message of `total` bytes (fragment 1). 0; -1 a protocol violation (*why says what);
 * E_NOMEM. */
int q_receiver_on_frame(q_receiver *r, uint8_t channel, uint8_t mode, uint32_t id,
                        int fragment, uint32_t offset, uint32_t total, const uint8_t *data,
                        uint16_t len, q_deliver_fn deliver, void *ctx, const char **why);
uint64_t q_receiver_duplicates(const q_receiver *r);
uint64_t q_receiver_stale(const q_receiver *r);
size_t q_receiver_buffered(const q_receiver *r);

#endif
