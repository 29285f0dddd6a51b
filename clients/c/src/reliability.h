/* Acknowledgements, loss detection and the receive window (docs/PROTOCOL.md section 6).
 *
 * SendTracker: the ack-eliciting packets in flight, in a ring indexed by pn mod window. The
 * send window (next pn - floor < window) guarantees that two tracked packets never share a
 * slot, and pure ACKs are never tracked. ReceiveTracker: the cumulative point, the ranges
 * received above it (kept within one window), the ACK fields and the delayed-ACK timer. */
#ifndef Q_RELIABILITY_H
#define Q_RELIABILITY_H

#include "bbr.h"
#include "common.h"
#include "wire.h"

#define Q_INITIAL_RTO 1.0
#define Q_MIN_RTO 0.2
#define Q_MAX_RTO 60.0

typedef struct q_rtt {
    int sampled;
    double srtt, rttvar, min, latest;
    int backoff;
} q_rtt;

void q_rtt_update(q_rtt *r, double sample);
double q_rtt_base_rto(const q_rtt *r);
double q_rtt_rto(const q_rtt *r);

typedef struct q_sent {
    uint64_t pn; /* 0: the slot is free */
    double sent_time;
    uint32_t size;
    uint16_t nrefs;     /* message fragments carried (their references live in the connection) */
    uint8_t has_close;  /* carried the FIN's CLOSE frame */
    q_rate rate;
} q_sent;

/* Called for every packet an acknowledgement or a timeout resolves; `slot` indexes the
 * connection's per-slot data. */
typedef void (*q_sent_fn)(void *ctx, const q_sent *p, uint32_t slot);

typedef struct q_send_tracker {
    q_sent *slots;
    uint32_t window;
    uint32_t outstanding;
    uint64_t next_pn, floor_pn, last_tracked, peer_cumulative, largest_acked;
    uint64_t floor_announced_at;
    uint64_t bytes_in_flight;
    uint64_t top[3]; /* the largest pns acknowledged above the peer's cumulative point */
    int ntop;
    uint64_t invalid_acks;
    q_rtt rtt;
} q_send_tracker;

typedef struct q_ack_result {
    int valid;           /* 0: the ack named packets never sent and was ignored */
    q_acked acked;       /* newly acknowledged in-flight packets */
    uint32_t nacked, nlost;
    uint64_t lost_bytes;
    int has_rtt;
    double rtt_sample;
} q_ack_result;

int q_send_init(q_send_tracker *t, uint32_t window);
void q_send_free(q_send_tracker *t);
/* The lowest pn neither acknowledged nor declared lost; next_pn when there is none. */
static inline uint64_t q_send_floor(const q_send_tracker *t) {
    return t->outstanding ? t->floor_pn : t->next_pn;
}
static inline int q_send_can_send(const q_send_tracker *t) {
    return t->next_pn - q_send_floor(t) < t->window;
}
static inline uint64_t q_send_allocate(q_send_tracker *t) { return t->next_pn++; }
static inline uint32_t q_send_slot(const q_send_tracker *t, uint64_t pn) {
    return (uint32_t)(pn % t->window);
}
/* Track an ack-eliciting packet just sent under pn (allocated, within the window). */
q_sent *q_send_track(q_send_tracker *t, uint64_t pn, double now, uint32_t size, q_rate rate);
/* Process the ACK fields of one received packet. on_acked runs for each newly acknowledged
 * packet, on_lost for each packet fast retransmit declares lost (in pn order). */
void q_send_on_ack(q_send_tracker *t, uint32_t ack32, const q_sack *sack, int nsack, double now,
                   q_sent_fn on_acked, q_sent_fn on_lost, void *ctx, q_ack_result *res);
/* When the RTO fires; < 0: no ack-eliciting packet in flight. */
double q_send_loss_deadline(const q_send_tracker *t);
/* The RTO fired: everything sent at or before now - RTO is lost; returns how many. */
uint32_t q_send_on_loss_timer(q_send_tracker *t, double now, q_sent_fn on_lost, void *ctx,
                              uint64_t *lost_bytes);
/* Whether to announce ACK_FLOOR(floor) after the peer's cumulative ack32 (6.3). */
int q_send_peer_needs_floor(q_send_tracker *t, uint32_t ack32);

/* check() verdicts */
enum { Q_PN_NEW = 0, Q_PN_DUPLICATE = 1, Q_PN_TOO_OLD = 2, Q_PN_BEYOND_WINDOW = 3 };

typedef struct q_recv_tracker {
    uint64_t cumulative, largest;
    uint64_t *starts, *ends; /* disjoint, non-adjacent inclusive ranges above cumulative */
    uint32_t nranges, cap, window;
    double max_ack_delay;
    uint32_t unacked_eliciting;
    int ack_due_set;
    double ack_due;
    uint64_t window_slides;
} q_recv_tracker;

int q_recv_init(q_recv_tracker *t, uint32_t window, double max_ack_delay);
void q_recv_free(q_recv_tracker *t);
static inline uint64_t q_recv_expand(const q_recv_tracker *t, uint32_t seq) {
    return q_expand(seq, t->largest);
}
int q_recv_check(const q_recv_tracker *t, uint64_t pn);
void q_recv_on_received(q_recv_tracker *t, uint64_t pn, int ack_eliciting, double now);
void q_recv_on_floor(q_recv_tracker *t, uint32_t floor32);
/* The ack field and up to Q_MAX_SACK blocks, highest first; returns the block count. */
int q_recv_ack_fields(const q_recv_tracker *t, uint32_t *ack32, q_sack sack[Q_MAX_SACK]);
static inline double q_recv_ack_deadline(const q_recv_tracker *t) {
    return t->ack_due_set ? t->ack_due : -1.0;
}
static inline void q_recv_on_ack_sent(q_recv_tracker *t) {
    t->unacked_eliciting = 0;
    t->ack_due_set = 0;
}

#endif
