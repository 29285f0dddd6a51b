/* BBR v1 and the pacer, as docs/PROTOCOL.md section 8 specifies a sender (the reference is
 * quantum/bbr.py; the constants are the protocol's). */
#include "bbr.h"

#define STARTUP_GAIN 2.77
#define DRAIN_GAIN (1.0 / STARTUP_GAIN)
#define PROBE_BW_CWND_GAIN 2.0
#define CYCLE_LENGTH 8
static const double PACING_GAIN_CYCLE[CYCLE_LENGTH] = {1.25, 0.75, 1, 1, 1, 1, 1, 1};
#define BTL_BW_WINDOW_ROUNDS 10.0
#define MIN_RTT_WINDOW 10.0
#define PROBE_RTT_DURATION 0.2
#define FULL_BW_GROWTH 1.25
#define FULL_BW_ROUNDS 3
#define INITIAL_RTT 0.1
#define PACING_BURST_TIME 0.001
#define PACING_BURST_PACKETS 2
#define QUANTA_PACKETS 3

/* ----------------------------------------------------------------------- windowed max */

static double winmax_reset(q_winmax *w, double t, double v) {
    for (int i = 0; i < 3; i++) {
        w->t[i] = t;
        w->v[i] = v;
    }
    return v;
}

static double winmax_update(q_winmax *w, double t, double v) {
    double win = w->window;
    if (v >= w->v[0] || t - w->t[2] > win)
        return winmax_reset(w, t, v);
    if (v >= w->v[1]) {
        w->t[1] = w->t[2] = t;
        w->v[1] = w->v[2] = v;
    } else if (v >= w->v[2]) {
        w->t[2] = t;
        w->v[2] = v;
    }
    double dt = t - w->t[0];
    if (dt > win) {
        /* the best sample aged out: promote the runners-up */
        w->t[0] = w->t[1]; w->t[1] = w->t[2]; w->t[2] = t;
        w->v[0] = w->v[1]; w->v[1] = w->v[2]; w->v[2] = v;
        if (t - w->t[0] > win) {
            w->t[0] = w->t[1]; w->t[1] = w->t[2];
            w->v[0] = w->v[1]; w->v[1] = w->v[2];
        }
    } else if (w->t[1] == w->t[0] && dt > win / 4) {
        w->t[1] = w->t[2] = t;
        w->v[1] = w->v[2] = v;
    } else if (w->t[2] == w->t[1] && dt > win / 2) {
        w->t[2] = t;
        w->v[2] = v;
    }
    return w->v[0];
}

/* ------------------------------------------------------------------------------ model */

static double burst(const q_bbr *b) {
    return q_max_d((double)PACING_BURST_PACKETS * b->max_datagram,
                   b->pacing_rate * PACING_BURST_TIME);
}

void q_bbr_init(q_bbr *b, uint32_t max_datagram, uint64_t seed) {
    memset(b, 0, sizeof *b);
    b->max_datagram = max_datagram;
    b->min_cwnd = 4ull * max_datagram;
    b->initial_cwnd = 10ull * max_datagram;
    b->state = Q_BBR_STARTUP;
    b->pacing_gain = b->cwnd_gain = STARTUP_GAIN;
    b->cwnd = b->initial_cwnd;
    b->pacing_rate = STARTUP_GAIN * (double)b->initial_cwnd / INITIAL_RTT;
    b->min_rtt = -1.0;
    b->bw_filter.window = BTL_BW_WINDOW_ROUNDS;
    b->tokens = burst(b);
    b->pace_time = -1.0;
    b->rng = seed ? seed : 0x9E3779B97F4A7C15ull;
}

static void refill(q_bbr *b, double now) {
    if (b->pace_time < 0.0) {
        b->pace_time = now;
    } else if (now > b->pace_time) {
        double tokens = b->tokens + (now - b->pace_time) * b->pacing_rate;
        double cap = burst(b);
        b->tokens = tokens < cap ? tokens : cap;
        b->pace_time = now;
    }
}

static uint64_t bdp_inflight(const q_bbr *b, double gain) {
    if (b->min_rtt < 0.0 || b->btl_bw <= 0.0)
        return b->initial_cwnd;
    return (uint64_t)(gain * b->btl_bw * b->min_rtt) + (uint64_t)QUANTA_PACKETS * b->max_datagram;
}

static void set_pacing_rate_with_gain(q_bbr *b, double gain) {
    double rate;
    if (b->btl_bw <= 0.0) {
        if (b->min_rtt <= 0.0)
            return;
        rate = gain * (double)b->initial_cwnd / b->min_rtt;
    } else {
        rate = gain * b->btl_bw;
    }
    /* in STARTUP the rate only grows: one low early sample must not stall the ramp-up */
    if (b->filled_pipe || rate > b->pacing_rate)
        b->pacing_rate = rate;
}

static void save_cwnd(q_bbr *b) {
    if (!b->in_recovery && b->state != Q_BBR_PROBE_RTT)
        b->prior_cwnd = b->cwnd;
    else
        b->prior_cwnd = q_max_u64(b->prior_cwnd, b->cwnd);
}

static uint64_t next_random(q_bbr *b) {
    uint64_t x = b->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return b->rng = x;
}

static void advance_cycle_phase(q_bbr *b, double now) {
    b->cycle_stamp = now;
    b->cycle_index = (b->cycle_index + 1) % CYCLE_LENGTH;
    b->pacing_gain = PACING_GAIN_CYCLE[b->cycle_index];
}

static void enter_probe_bw(q_bbr *b, double now) {
    b->state = Q_BBR_PROBE_BW;
    b->cwnd_gain = PROBE_BW_CWND_GAIN;
    /* a random phase other than the 0.75 one (index 1), advanced once right away */
    b->cycle_index = CYCLE_LENGTH - 1 - (int)(next_random(b) % (CYCLE_LENGTH - 1));
    advance_cycle_phase(b, now);
}

static void check_probe_rtt_done(q_bbr *b, double now) {
    if (!b->probe_rtt_done_set || now <= b->probe_rtt_done_stamp)
        return;
    b->min_rtt_stamp = now;
    b->cwnd = q_max_u64(b->cwnd, b->prior_cwnd);
    if (b->filled_pipe) {
        enter_probe_bw(b, now);
    } else {
        b->state = Q_BBR_STARTUP;
        b->pacing_gain = b->cwnd_gain = STARTUP_GAIN;
    }
}

static int is_next_cycle_phase(const q_bbr *b, double now, uint64_t prior_inflight) {
    int full_length = b->min_rtt >= 0.0 && now - b->cycle_stamp > b->min_rtt;
    double gain = b->pacing_gain;
    if (gain == 1.0)
        return full_length;
    if (gain > 1.0)
        return full_length && (b->loss_since_ack || prior_inflight >= bdp_inflight(b, gain));
    return full_length || prior_inflight <= bdp_inflight(b, 1.0);
}

static void check_full_pipe(q_bbr *b, int app_limited_sample) {
    if (b->filled_pipe || !b->round_start || app_limited_sample)
        return;
    if (b->btl_bw >= b->full_bw * FULL_BW_GROWTH) {
        b->full_bw = b->btl_bw;
        b->full_bw_count = 0;
        return;
    }
    if (++b->full_bw_count >= FULL_BW_ROUNDS)
        b->filled_pipe = 1;
}

static void check_drain(q_bbr *b, double now, uint64_t in_flight) {
    if (b->state == Q_BBR_STARTUP && b->filled_pipe) {
        b->state = Q_BBR_DRAIN;
        b->pacing_gain = DRAIN_GAIN;
        b->cwnd_gain = STARTUP_GAIN;
    }
    if (b->state == Q_BBR_DRAIN && in_flight <= bdp_inflight(b, 1.0))
        enter_probe_bw(b, now);
}

static void handle_probe_rtt(q_bbr *b, double now, uint64_t in_flight) {
    /* samples taken while inflight is held down say nothing about the bandwidth */
    b->app_limited = q_max_u64(b->delivered + in_flight, 1);
    if (!b->probe_rtt_done_set && in_flight <= b->min_cwnd) {
        b->probe_rtt_done_stamp = now + PROBE_RTT_DURATION;
        b->probe_rtt_done_set = 1;
        b->probe_rtt_round_done = 0;
        b->next_round_delivered = b->delivered;
    } else if (b->probe_rtt_done_set) {
        if (b->round_start)
            b->probe_rtt_round_done = 1;
        if (b->probe_rtt_round_done)
            check_probe_rtt_done(b, now);
    }
}

static void check_probe_rtt(q_bbr *b, double now, uint64_t in_flight, int expired) {
    if (b->state != Q_BBR_PROBE_RTT && expired && !b->idle_restart) {
        b->state = Q_BBR_PROBE_RTT;
        b->pacing_gain = b->cwnd_gain = 1.0;
        save_cwnd(b);
        b->probe_rtt_done_set = 0;
    }
    if (b->state == Q_BBR_PROBE_RTT)
        handle_probe_rtt(b, now, in_flight);
    b->idle_restart = 0;
}

/* ----------------------------------------------------------------------------- events */

q_rate q_bbr_on_sent(q_bbr *b, double now, uint32_t size, uint64_t bytes_in_flight) {
    refill(b, now);
    if (bytes_in_flight == 0) {
        /* nothing in flight: a send rate measured from here must not include the idle time */
        b->first_sent_time = b->delivered_time = now;
        if (b->app_limited) {
            b->idle_restart = 1;
            if (b->state == Q_BBR_PROBE_BW)
                set_pacing_rate_with_gain(b, 1.0);
            else if (b->state == Q_BBR_PROBE_RTT)
                check_probe_rtt_done(b, now);
        }
    }
    b->tokens -= size;
    q_rate r = {b->delivered, b->delivered_time, b->first_sent_time, b->app_limited != 0};
    return r;
}

void q_bbr_on_handshake_rtt(q_bbr *b, double rtt) {
    if (b->btl_bw == 0.0 && rtt > 0.0)
        b->pacing_rate = STARTUP_GAIN * (double)b->initial_cwnd / q_max_d(rtt, 0.001);
}

void q_bbr_on_app_limited(q_bbr *b, uint64_t bytes_in_flight) {
    if (bytes_in_flight < b->cwnd)
        b->app_limited = q_max_u64(b->delivered + bytes_in_flight, 1);
}

double q_bbr_next_send_time(const q_bbr *b, double now) {
    if (b->pace_time < 0.0)
        return now;
    double need = (double)b->max_datagram - b->tokens;
    if (need <= 0.0)
        return b->pace_time;
    return b->pace_time + need / b->pacing_rate;
}

void q_acked_add(q_acked *a, uint32_t size, double sent_time, const q_rate *rate) {
    a->bytes += size;
    /* the sample comes from the most recently sent packet: the shortest, newest interval */
    if (!a->have || rate->delivered > a->best.delivered ||
        (rate->delivered == a->best.delivered && sent_time > a->best_sent)) {
        a->best = *rate;
        a->best_sent = sent_time;
    }
    a->have = 1;
}

static void update_min_rtt_only(q_bbr *b, double now, double rtt) {
    int expired = b->min_rtt >= 0.0 && now > b->min_rtt_stamp + MIN_RTT_WINDOW;
    if (rtt >= 0.0 && (b->min_rtt < 0.0 || rtt <= b->min_rtt || expired)) {
        b->min_rtt = rtt;
        b->min_rtt_stamp = now;
    }
}

void q_bbr_on_ack(q_bbr *b, double now, const q_acked *acked, uint64_t in_flight, int has_rtt,
                  double rtt_sample) {
    if (!acked->have) {
        if (has_rtt)
            update_min_rtt_only(b, now, rtt_sample);
        return;
    }
    refill(b, now); /* bytes earned so far at the old rate, before the rate changes */
    const q_rate *best = &acked->best;
    uint64_t acked_bytes = acked->bytes;
    uint64_t delivered = b->delivered + acked_bytes;
    b->delivered = delivered;
    b->delivered_time = now;
    if (b->app_limited && delivered > b->app_limited)
        b->app_limited = 0;

    /* delivery-rate sample: the longer of the send and ACK intervals */
    double interval = acked->best_sent - best->first_sent_time;
    double ack_interval = now - best->delivered_time;
    if (ack_interval > interval)
        interval = ack_interval;
    b->first_sent_time = acked->best_sent;
    double min_rtt = b->min_rtt;
    double floor = min_rtt; /* an interval shorter than any RTT is a bogus sample */
    if (has_rtt && (floor < 0.0 || rtt_sample < floor))
        floor = rtt_sample;
    int have_rate = 0;
    double rate = 0.0;
    if (interval > 0.0 && (floor < 0.0 || interval >= floor)) {
        rate = (double)(delivered - best->delivered) / interval;
        have_rate = 1;
    }

    if (best->delivered >= b->next_round_delivered) {
        b->next_round_delivered = delivered;
        b->round_count++;
        b->round_start = 1;
        b->packet_conservation = 0;
    } else {
        b->round_start = 0;
    }

    if (b->in_recovery && acked->best_sent > b->recovery_start) {
        /* a packet sent after the loss arrived: the loss episode is over */
        b->in_recovery = 0;
        b->packet_conservation = 0;
        if (b->prior_cwnd > b->cwnd)
            b->cwnd = b->prior_cwnd;
    }

    if (have_rate && (rate >= b->btl_bw || !best->app_limited))
        b->btl_bw = winmax_update(&b->bw_filter, (double)b->round_count, rate);

    if (b->state == Q_BBR_PROBE_BW && is_next_cycle_phase(b, now, in_flight + acked_bytes))
        advance_cycle_phase(b, now);
    b->loss_since_ack = 0;
    if (b->round_start && !b->filled_pipe)
        check_full_pipe(b, best->app_limited);
    if (b->state == Q_BBR_STARTUP || b->state == Q_BBR_DRAIN)
        check_drain(b, now, in_flight);

    int expired = min_rtt >= 0.0 && now > b->min_rtt_stamp + MIN_RTT_WINDOW;
    if (has_rtt && rtt_sample >= 0.0 && (min_rtt < 0.0 || rtt_sample <= min_rtt || expired)) {
        b->min_rtt = min_rtt = rtt_sample;
        b->min_rtt_stamp = now;
    }
    if (expired || b->state == Q_BBR_PROBE_RTT)
        check_probe_rtt(b, now, in_flight, expired);
    else
        b->idle_restart = 0;

    double bw = b->btl_bw;
    int have_new = 0;
    double new_rate = 0.0;
    if (bw > 0.0) {
        new_rate = b->pacing_gain * bw;
        have_new = 1;
    } else if (min_rtt > 0.0) {
        new_rate = b->pacing_gain * (double)b->initial_cwnd / min_rtt;
        have_new = 1;
    }
    if (have_new && (b->filled_pipe || new_rate > b->pacing_rate))
        b->pacing_rate = new_rate;

    uint64_t cwnd = b->cwnd;
    if (b->packet_conservation) {
        if (in_flight + acked_bytes > cwnd)
            cwnd = in_flight + acked_bytes;
    } else {
        uint64_t target;
        if (min_rtt < 0.0 || bw <= 0.0)
            target = b->initial_cwnd;
        else
            target = (uint64_t)(b->cwnd_gain * bw * min_rtt) +
                     (uint64_t)QUANTA_PACKETS * b->max_datagram;
        if (b->filled_pipe) {
            cwnd += acked_bytes;
            if (target < cwnd)
                cwnd = target;
        } else if (cwnd < target || delivered < b->initial_cwnd) {
            cwnd += acked_bytes;
        }
    }
    if (cwnd < b->min_cwnd || (cwnd > b->min_cwnd && b->state == Q_BBR_PROBE_RTT))
        cwnd = b->min_cwnd;
    b->cwnd = cwnd;
}

void q_bbr_on_loss(q_bbr *b, double now, uint64_t lost_bytes, uint64_t in_flight) {
    if (lost_bytes == 0)
        return;
    b->loss_since_ack = 1;
    if (!b->in_recovery) {
        save_cwnd(b);
        b->in_recovery = 1;
        b->recovery_start = now;
        b->packet_conservation = 1;
        b->next_round_delivered = b->delivered; /* conservation lasts one round */
        b->cwnd = q_max_u64(in_flight, b->min_cwnd);
    }
    if (b->state == Q_BBR_PROBE_RTT)
        b->cwnd = q_min_u64(b->cwnd, b->min_cwnd);
}

const char *q_bbr_state_name(q_bbr_state s) {
    switch (s) {
    case Q_BBR_STARTUP: return "STARTUP";
    case Q_BBR_DRAIN: return "DRAIN";
    case Q_BBR_PROBE_BW: return "PROBE_BW";
    case Q_BBR_PROBE_RTT: return "PROBE_RTT";
    }
    return "?";
}
