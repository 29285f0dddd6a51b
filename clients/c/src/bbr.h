/* BBR v1 congestion control with a token-bucket pacer (docs/PROTOCOL.md section 8).
 * Sans-I/O: every call that needs the time takes `now`. */
#ifndef Q_BBR_H
#define Q_BBR_H

#include "common.h"

/* Delivery state when a packet was sent; its acknowledgement turns it into a rate sample. */
typedef struct q_rate {
    uint64_t delivered;
    double delivered_time;
    double first_sent_time;
    uint8_t app_limited;
} q_rate;

typedef enum { Q_BBR_STARTUP, Q_BBR_DRAIN, Q_BBR_PROBE_BW, Q_BBR_PROBE_RTT } q_bbr_state;

/* A windowed max over rounds (Kathleen Nichols' algorithm, as in Linux's win_minmax). */
typedef struct q_winmax {
    double window;
    double t[3], v[3];
} q_winmax;

typedef struct q_bbr {
    q_bbr_state state;
    uint32_t max_datagram;
    uint64_t min_cwnd, initial_cwnd, cwnd, prior_cwnd;
    double pacing_gain, cwnd_gain, pacing_rate, btl_bw;
    double min_rtt, min_rtt_stamp; /* min_rtt < 0: no sample yet */
    q_winmax bw_filter;
    uint64_t delivered;
    double delivered_time, first_sent_time;
    uint64_t app_limited; /* `delivered` mark until which samples are app-limited; 0: none */
    uint64_t round_count, next_round_delivered;
    int round_start, filled_pipe, full_bw_count, idle_restart;
    double full_bw;
    int cycle_index;
    double cycle_stamp;
    int probe_rtt_done_set, probe_rtt_round_done;
    double probe_rtt_done_stamp;
    int in_recovery, packet_conservation, loss_since_ack;
    double recovery_start;
    double tokens, pace_time; /* pace_time < 0: the bucket was never filled */
    uint64_t rng;             /* xorshift state for the PROBE_BW starting phase */
} q_bbr;

/* Aggregate of the packets one acknowledgement newly covers. */
typedef struct q_acked {
    uint64_t bytes;       /* in-flight bytes newly acknowledged */
    int have;             /* at least one in-flight packet */
    q_rate best;          /* the snapshot of the most recently sent of them */
    double best_sent;
} q_acked;

void q_bbr_init(q_bbr *b, uint32_t max_datagram, uint64_t seed);
/* An in-flight packet leaves (bytes_in_flight excludes it): the snapshot to keep with it. */
q_rate q_bbr_on_sent(q_bbr *b, double now, uint32_t size, uint64_t bytes_in_flight);
void q_bbr_on_handshake_rtt(q_bbr *b, double rtt);
void q_bbr_on_app_limited(q_bbr *b, uint64_t bytes_in_flight);
static inline int q_bbr_can_send(const q_bbr *b, uint64_t in_flight) { return in_flight < b->cwnd; }
double q_bbr_next_send_time(const q_bbr *b, double now);
/* Fold one newly acknowledged in-flight packet into the aggregate. */
void q_acked_add(q_acked *a, uint32_t size, double sent_time, const q_rate *rate);
void q_bbr_on_ack(q_bbr *b, double now, const q_acked *acked, uint64_t bytes_in_flight,
                  int has_rtt, double rtt_sample);
void q_bbr_on_loss(q_bbr *b, double now, uint64_t lost_bytes, uint64_t bytes_in_flight);
const char *q_bbr_state_name(q_bbr_state s);

#endif
