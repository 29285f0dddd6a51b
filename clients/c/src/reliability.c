/* Every retransmission decision: docs/PROTOCOL.md section 6 (reference: quantum/reliability.py). */
#include "reliability.h"

#include <stdlib.h>

#define RTT_ALPHA 0.125
#define RTT_BETA 0.25
#define RTO_K 4.0
#define CLOCK_GRANULARITY 0.001
#define MAX_BACKOFF 16
#define FAST_RETRANSMIT_THRESHOLD 3
#define ACK_ELICITING_THRESHOLD 2
#define MAX_PN_JUMP ((uint64_t)1 << 30)

/* ------------------------------------------------------------------------ RTT (RFC 6298) */

void q_rtt_update(q_rtt *r, double sample) {
    if (sample < 0)
        return;
    r->latest = sample;
    if (!r->sampled) {
        r->sampled = 1;
        r->min = r->srtt = sample;
        r->rttvar = sample / 2;
        return;
    }
    if (sample < r->min)
        r->min = sample;
    double diff = r->srtt > sample ? r->srtt - sample : sample - r->srtt;
    r->rttvar = (1 - RTT_BETA) * r->rttvar + RTT_BETA * diff; /* before srtt moves (2.3) */
    r->srtt = (1 - RTT_ALPHA) * r->srtt + RTT_ALPHA * sample;
}

double q_rtt_base_rto(const q_rtt *r) {
    double rto = Q_INITIAL_RTO;
    if (r->sampled) {
        double var = RTO_K * r->rttvar;
        rto = r->srtt + (var > CLOCK_GRANULARITY ? var : CLOCK_GRANULARITY);
    }
    if (rto < Q_MIN_RTO)
        return Q_MIN_RTO;
    return rto < Q_MAX_RTO ? rto : Q_MAX_RTO;
}

double q_rtt_rto(const q_rtt *r) {
    double rto = q_rtt_base_rto(r);
    if (r->backoff)
        rto *= (double)(1u << r->backoff);
    return rto < Q_MAX_RTO ? rto : Q_MAX_RTO;
}

/* ----------------------------------------------------------------------------- sending */

int q_send_init(q_send_tracker *t, uint32_t window) {
    memset(t, 0, sizeof *t);
    t->slots = calloc(window, sizeof *t->slots);
    if (!t->slots)
        return QUANTUM_E_NOMEM;
    t->window = window;
    t->next_pn = 1;
    t->floor_pn = 1;
    t->peer_cumulative = 1;
    return 0;
}

void q_send_free(q_send_tracker *t) {
    free(t->slots);
    t->slots = NULL;
}

q_sent *q_send_track(q_send_tracker *t, uint64_t pn, double now, uint32_t size, q_rate rate) {
    q_sent *p = &t->slots[q_send_slot(t, pn)];
    if (t->outstanding == 0)
        t->floor_pn = pn;
    p->pn = pn;
    p->sent_time = now;
    p->size = size;
    p->nrefs = 0;
    p->has_close = 0;
    p->rate = rate;
    t->outstanding++;
    t->last_tracked = pn;
    t->bytes_in_flight += size;
    return p;
}

static void advance_floor(q_send_tracker *t) {
    if (t->outstanding == 0) {
        t->floor_pn = t->next_pn;
        return;
    }
    while (t->floor_pn < t->next_pn && t->slots[q_send_slot(t, t->floor_pn)].pn != t->floor_pn)
        t->floor_pn++;
}

static int is_outstanding(const q_send_tracker *t, uint64_t pn) {
    return pn != 0 && t->slots[q_send_slot(t, pn)].pn == pn;
}

/* Remove pn (outstanding); hand it to fn. */
static void resolve(q_send_tracker *t, uint64_t pn, q_sent_fn fn, void *ctx) {
    uint32_t slot = q_send_slot(t, pn);
    q_sent *p = &t->slots[slot];
    t->outstanding--;
    t->bytes_in_flight -= p->size;
    if (fn)
        fn(ctx, p, slot);
    p->pn = 0;
}

typedef struct ack_scan {
    q_send_tracker *t;
    q_ack_result *res;
    uint64_t newest;
    double newest_sent;
    q_sent_fn fn;
    void *ctx;
} ack_scan;

static void ack_one(ack_scan *s, uint64_t pn) {
    q_sent *p = &s->t->slots[q_send_slot(s->t, pn)];
    q_acked_add(&s->res->acked, p->size, p->sent_time, &p->rate);
    s->res->nacked++;
    if (pn > s->newest) {
        s->newest = pn;
        s->newest_sent = p->sent_time;
    }
    resolve(s->t, pn, s->fn, s->ctx);
}

/* Acknowledge every outstanding pn in [lo, hi]; cost min(hi - lo, window). */
static void ack_range(ack_scan *s, uint64_t lo, uint64_t hi) {
    q_send_tracker *t = s->t;
    if (t->outstanding == 0 || lo > hi)
        return;
    lo = q_max_u64(lo, t->floor_pn);
    hi = q_min_u64(hi, t->next_pn - 1);
    if (lo > hi)
        return;
    if (hi - lo + 1 > t->window) {
        for (uint32_t i = 0; i < t->window && t->outstanding; i++) {
            uint64_t pn = t->slots[i].pn;
            if (pn >= lo && pn <= hi)
                ack_one(s, pn);
        }
    } else {
        for (uint64_t pn = lo; pn <= hi && t->outstanding; pn++)
            if (is_outstanding(t, pn))
                ack_one(s, pn);
    }
}

static int cmp_desc(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

void q_send_on_ack(q_send_tracker *t, uint32_t ack32, const q_sack *sack, int nsack, double now,
                   q_sent_fn on_acked, q_sent_fn on_lost, void *ctx, q_ack_result *res) {
    memset(res, 0, sizeof *res);
    uint64_t next_pn = t->next_pn, largest_sent = next_pn - 1;
    uint64_t cumulative = q_expand(ack32, largest_sent);
    if (cumulative > next_pn) {
        t->invalid_acks++;
        return;
    }
    uint64_t starts[Q_MAX_SACK], ends[Q_MAX_SACK];
    for (int i = 0; i < nsack; i++) {
        uint64_t end = q_expand(sack[i].end, largest_sent);
        uint64_t span = (uint32_t)(sack[i].end - sack[i].start);
        if (end >= next_pn || span >= end) { /* names a pn never sent, or below 1 */
            t->invalid_acks++;
            return;
        }
        starts[i] = end - span;
        ends[i] = end;
    }
    res->valid = 1;
    if (cumulative > t->peer_cumulative)
        t->peer_cumulative = cumulative;
    if (cumulative >= 1 && cumulative - 1 > t->largest_acked)
        t->largest_acked = cumulative - 1;
    if (t->outstanding == 0 && nsack == 0)
        return; /* nothing in flight (a heartbeat-only connection): no news */

    ack_scan s = {t, res, 0, 0.0, on_acked, ctx};
    if (cumulative > 0)
        ack_range(&s, 1, cumulative - 1);
    uint64_t top[3 + 3 * Q_MAX_SACK];
    int ntop = t->ntop;
    memcpy(top, t->top, sizeof t->top);
    for (int i = 0; i < nsack; i++) {
        uint64_t start = starts[i], end = ends[i];
        if (end > t->largest_acked)
            t->largest_acked = end;
        uint64_t low = end >= FAST_RETRANSMIT_THRESHOLD - 1 ? end - (FAST_RETRANSMIT_THRESHOLD - 1)
                                                            : 0;
        if (low < start)
            low = start;
        for (uint64_t pn = end + 1; pn-- > low;) {
            int known = 0;
            for (int j = 0; j < ntop; j++)
                known |= top[j] == pn;
            if (pn >= cumulative && !known)
                top[ntop++] = pn;
        }
        ack_range(&s, q_max_u64(start, cumulative), end);
    }
    if (ntop > FAST_RETRANSMIT_THRESHOLD) {
        qsort(top, (size_t)ntop, sizeof top[0], cmp_desc);
        ntop = FAST_RETRANSMIT_THRESHOLD;
    }
    memcpy(t->top, top, sizeof t->top);
    t->ntop = ntop;

    if (res->nacked) {
        double sample = now - s.newest_sent; /* every tracked packet is ack-eliciting */
        if (sample >= 0) {
            q_rtt_update(&t->rtt, sample);
            res->has_rtt = 1;
            res->rtt_sample = sample;
        }
        t->rtt.backoff = 0;
    }

    advance_floor(t);
    if (ntop == FAST_RETRANSMIT_THRESHOLD && t->outstanding) {
        uint64_t threshold = q_min_u64(top[0], q_min_u64(top[1], top[2]));
        uint64_t base = t->floor_pn; /* every tracked pn is within one window above it */
        for (uint32_t i = 0; i < t->window && t->outstanding; i++) {
            uint64_t pn = base + i;
            if (pn >= threshold)
                break;
            if (!is_outstanding(t, pn))
                continue;
            res->lost_bytes += t->slots[q_send_slot(t, pn)].size;
            res->nlost++;
            resolve(t, pn, on_lost, ctx);
        }
        advance_floor(t);
    }
}

double q_send_loss_deadline(const q_send_tracker *t) {
    if (t->outstanding == 0)
        return -1.0;
    return t->slots[q_send_slot(t, t->floor_pn)].sent_time + q_rtt_rto(&t->rtt);
}

uint32_t q_send_on_loss_timer(q_send_tracker *t, double now, q_sent_fn on_lost, void *ctx,
                              uint64_t *lost_bytes) {
    double rto = q_rtt_rto(&t->rtt);
    uint32_t n = 0;
    *lost_bytes = 0;
    uint64_t base = t->floor_pn;
    for (uint32_t i = 0; i < t->window && t->outstanding; i++) {
        uint64_t pn = base + i;
        if (!is_outstanding(t, pn))
            continue;
        q_sent *p = &t->slots[q_send_slot(t, pn)];
        if (p->sent_time + rto <= now) {
            *lost_bytes += p->size;
            n++;
            resolve(t, pn, on_lost, ctx);
        }
    }
    if (n) {
        if (t->rtt.backoff < MAX_BACKOFF)
            t->rtt.backoff++;
        advance_floor(t);
    }
    return n;
}

int q_send_peer_needs_floor(q_send_tracker *t, uint32_t ack32) {
    uint64_t cumulative = q_expand(ack32, t->next_pn - 1);
    if (cumulative > t->next_pn)
        return 0;
    cumulative = q_max_u64(cumulative, t->peer_cumulative);
    uint64_t largest = t->largest_acked;
    if (cumulative >= q_send_floor(t) || largest <= cumulative)
        return 0;
    if (largest < t->floor_announced_at)
        return 0;
    t->floor_announced_at = t->next_pn;
    return 1;
}

/* --------------------------------------------------------------------------- receiving */

int q_recv_init(q_recv_tracker *t, uint32_t window, double max_ack_delay) {
    memset(t, 0, sizeof *t);
    t->cap = window / 2 + 2; /* disjoint, non-adjacent ranges within one window */
    t->starts = calloc(t->cap, sizeof *t->starts);
    t->ends = calloc(t->cap, sizeof *t->ends);
    if (!t->starts || !t->ends) {
        q_recv_free(t);
        return QUANTUM_E_NOMEM;
    }
    t->window = window;
    t->max_ack_delay = max_ack_delay;
    t->cumulative = 1;
    t->largest = 0;
    return 0;
}

void q_recv_free(q_recv_tracker *t) {
    free(t->starts);
    free(t->ends);
    t->starts = t->ends = NULL;
}

/* index of the first range whose start is > pn */
static uint32_t upper_bound(const uint64_t *a, uint32_t n, uint64_t pn) {
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (a[mid] <= pn)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int q_recv_check(const q_recv_tracker *t, uint64_t pn) {
    if (pn < t->cumulative)
        return Q_PN_TOO_OLD;
    if (pn - t->cumulative > MAX_PN_JUMP)
        return Q_PN_BEYOND_WINDOW;
    if (t->nranges && pn <= t->ends[t->nranges - 1]) {
        uint32_t i = upper_bound(t->starts, t->nranges, pn);
        if (i > 0 && pn <= t->ends[i - 1])
            return Q_PN_DUPLICATE;
    }
    return Q_PN_NEW;
}

static void remove_ranges(q_recv_tracker *t, uint32_t at, uint32_t count) {
    memmove(t->starts + at, t->starts + at + count, (t->nranges - at - count) * sizeof(uint64_t));
    memmove(t->ends + at, t->ends + at + count, (t->nranges - at - count) * sizeof(uint64_t));
    t->nranges -= count;
}

static void advance(q_recv_tracker *t, uint64_t cumulative) {
    uint32_t gone = 0;
    while (gone < t->nranges && t->ends[gone] < cumulative)
        gone++;
    if (gone)
        remove_ranges(t, 0, gone);
    if (t->nranges && t->starts[0] <= cumulative) {
        cumulative = t->ends[0] + 1;
        remove_ranges(t, 0, 1);
    }
    t->cumulative = cumulative;
    if (cumulative - 1 > t->largest)
        t->largest = cumulative - 1;
}

/* Insert pn above the cumulative point; 0 if already there. */
static int insert(q_recv_tracker *t, uint64_t pn) {
    uint32_t n = t->nranges;
    if (n == 0 || pn > t->ends[n - 1] + 1) {
        if (n == t->cap)
            remove_ranges(t, 0, 1); /* cannot happen within one window; stay bounded anyway */
        t->starts[t->nranges] = t->ends[t->nranges] = pn;
        t->nranges++;
        return 1;
    }
    if (pn == t->ends[n - 1] + 1) {
        t->ends[n - 1] = pn;
        return 1;
    }
    uint32_t i = upper_bound(t->starts, n, pn);
    if (i && t->ends[i - 1] >= pn)
        return 0;
    int joins_left = i > 0 && t->ends[i - 1] + 1 == pn;
    int joins_right = i < n && t->starts[i] == pn + 1;
    if (joins_left && joins_right) {
        t->ends[i - 1] = t->ends[i];
        remove_ranges(t, i, 1);
    } else if (joins_left) {
        t->ends[i - 1] = pn;
    } else if (joins_right) {
        t->starts[i] = pn;
    } else {
        if (n == t->cap)
            return 0;
        memmove(t->starts + i + 1, t->starts + i, (n - i) * sizeof(uint64_t));
        memmove(t->ends + i + 1, t->ends + i, (n - i) * sizeof(uint64_t));
        t->starts[i] = t->ends[i] = pn;
        t->nranges++;
    }
    return 1;
}

void q_recv_on_received(q_recv_tracker *t, uint64_t pn, int ack_eliciting, double now) {
    if (pn < t->cumulative)
        return;
    uint64_t largest = t->largest;
    if (pn >= t->cumulative + t->window) {
        /* the sender never sends a window above its floor: an implicit floor (6.5) */
        advance(t, pn - t->window + 1);
        t->window_slides++;
    }
    if (pn == t->cumulative) {
        uint64_t c = pn + 1;
        if (t->nranges && t->starts[0] == c) {
            c = t->ends[0] + 1;
            remove_ranges(t, 0, 1);
        }
        t->cumulative = c;
    } else if (!insert(t, pn)) {
        return;
    }
    if (pn > largest)
        t->largest = pn;
    if (ack_eliciting) {
        t->unacked_eliciting++;
        if (t->unacked_eliciting >= ACK_ELICITING_THRESHOLD || pn != largest + 1) {
            if (!t->ack_due_set || now < t->ack_due) {
                t->ack_due = now;
                t->ack_due_set = 1;
            }
        } else if (!t->ack_due_set) {
            t->ack_due = now + t->max_ack_delay;
            t->ack_due_set = 1;
        }
    }
}

void q_recv_on_floor(q_recv_tracker *t, uint32_t floor32) {
    uint64_t floor = q_expand(floor32, t->largest);
    if (floor > t->cumulative)
        advance(t, floor);
}

int q_recv_ack_fields(const q_recv_tracker *t, uint32_t *ack32, q_sack sack[Q_MAX_SACK]) {
    *ack32 = (uint32_t)t->cumulative;
    int k = 0;
    for (uint32_t i = t->nranges; i-- > 0 && k < Q_MAX_SACK; k++) {
        sack[k].start = (uint32_t)t->starts[i];
        sack[k].end = (uint32_t)t->ends[i];
    }
    return k;
}
