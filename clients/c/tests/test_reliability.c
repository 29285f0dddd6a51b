/* Section 6: the RTT estimator, the send tracker (acks, SACK, fast retransmit, RTO, the ack
 * floor) and the receive tracker (replay guard, ranges, floors, delayed ACKs). */
#include "reliability.h"
#include "test.h"

static void test_rtt_estimator(void) {
    q_rtt r = {0};
    CHECK(q_rtt_base_rto(&r) == 1.0); /* no sample: 1 s */
    q_rtt_update(&r, 0.1);
    CHECK(r.srtt == 0.1 && r.rttvar == 0.05);
    CHECK(q_rtt_base_rto(&r) > 0.29 && q_rtt_base_rto(&r) < 0.31); /* 0.1 + 4 x 0.05 */
    q_rtt_update(&r, 0.2);
    /* rttvar first, from the old srtt: 3/4 0.05 + 1/4 0.1; then srtt = 7/8 0.1 + 1/8 0.2 */
    CHECK(r.rttvar > 0.0624 && r.rttvar < 0.0626);
    CHECK(r.srtt > 0.1124 && r.srtt < 0.1126);
    q_rtt tiny = {0};
    q_rtt_update(&tiny, 0.001);
    CHECK(q_rtt_base_rto(&tiny) == 0.2); /* clamped to 200 ms */
    tiny.backoff = 3;
    CHECK(q_rtt_rto(&tiny) == 1.6);
    tiny.backoff = 16;
    CHECK(q_rtt_rto(&tiny) == 60.0);
}

typedef struct seen {
    uint64_t acked[64], lost[64];
    int nacked, nlost;
} seen;

static void note_acked(void *ctx, const q_sent *p, uint32_t slot) {
    seen *s = ctx;
    Q_UNUSED(slot);
    s->acked[s->nacked++] = p->pn;
}
static void note_lost(void *ctx, const q_sent *p, uint32_t slot) {
    seen *s = ctx;
    Q_UNUSED(slot);
    s->lost[s->nlost++] = p->pn;
}

static void send_n(q_send_tracker *t, int n, double now) {
    q_rate rate = {0, 0, 0, 0};
    for (int i = 0; i < n; i++) {
        uint64_t pn = q_send_allocate(t);
        q_send_track(t, pn, now, 1000, rate);
    }
}

static void test_cumulative_ack_and_rtt_sample(void) {
    q_send_tracker t;
    CHECK(q_send_init(&t, 256) == 0);
    send_n(&t, 5, 1.0);
    CHECK(t.bytes_in_flight == 5000 && q_send_floor(&t) == 1);
    seen s = {0};
    q_ack_result res;
    q_send_on_ack(&t, 4, NULL, 0, 1.05, note_acked, note_lost, &s, &res); /* 1..3 */
    CHECK(res.valid && res.nacked == 3 && s.nacked == 3 && res.has_rtt);
    CHECK(res.rtt_sample > 0.049 && res.rtt_sample < 0.051);
    CHECK(q_send_floor(&t) == 4 && t.bytes_in_flight == 2000);
    q_send_on_ack(&t, 9, NULL, 0, 1.06, note_acked, note_lost, &s, &res); /* never sent */
    CHECK(!res.valid && t.invalid_acks == 1 && t.outstanding == 2);
    q_send_free(&t);
}

static void test_fast_retransmit_after_three_higher_acks(void) {
    q_send_tracker t;
    CHECK(q_send_init(&t, 256) == 0);
    send_n(&t, 6, 1.0);
    seen s = {0};
    q_ack_result res;
    q_sack sack[1] = {{4, 5}}; /* 4..5 acknowledged, 1..3 missing */
    q_send_on_ack(&t, 1, sack, 1, 1.1, note_acked, note_lost, &s, &res);
    CHECK(res.nacked == 2 && res.nlost == 0); /* two above: not yet */
    sack[0].end = 6;
    q_send_on_ack(&t, 1, sack, 1, 1.2, note_acked, note_lost, &s, &res);
    CHECK(res.nacked == 1 && res.nlost == 3); /* 4, 5, 6 acked: 1, 2, 3 are lost */
    CHECK(s.lost[0] == 1 && s.lost[1] == 2 && s.lost[2] == 3);
    CHECK(t.outstanding == 0 && t.bytes_in_flight == 0 && q_send_floor(&t) == 7);
    q_send_free(&t);
}

static void test_rto_declares_old_packets_lost_and_backs_off(void) {
    q_send_tracker t;
    CHECK(q_send_init(&t, 256) == 0);
    send_n(&t, 2, 1.0);
    send_n(&t, 1, 1.5);
    CHECK(q_send_loss_deadline(&t) == 2.0); /* oldest + 1 s */
    seen s = {0};
    uint64_t lost_bytes;
    CHECK(q_send_on_loss_timer(&t, 2.0, note_lost, &s, &lost_bytes) == 2);
    CHECK(lost_bytes == 2000 && s.lost[0] == 1 && s.lost[1] == 2 && t.rtt.backoff == 1);
    CHECK(q_send_loss_deadline(&t) == 1.5 + 2.0); /* doubled */
    q_ack_result res;
    q_send_on_ack(&t, 4, NULL, 0, 2.1, note_acked, note_lost, &s, &res);
    CHECK(t.rtt.backoff == 0); /* new acks restore the unbacked-off value */
    q_send_free(&t);
}

static void test_floor_announced_once_per_round_trip(void) {
    q_send_tracker t;
    CHECK(q_send_init(&t, 256) == 0);
    send_n(&t, 4, 1.0);
    seen s = {0};
    uint64_t lost;
    q_send_on_loss_timer(&t, 2.0, note_lost, &s, &lost); /* all four lost */
    send_n(&t, 2, 2.0);                                  /* 5, 6 */
    q_ack_result res;
    q_sack sack[1] = {{6, 6}};
    q_send_on_ack(&t, 1, sack, 1, 2.1, note_acked, note_lost, &s, &res);
    /* the peer's cumulative point (1) is below our floor (5), with a real hole */
    CHECK(q_send_peer_needs_floor(&t, 1) == 1);
    CHECK(q_send_peer_needs_floor(&t, 1) == 0); /* not again until it acks a later packet */
    q_send_free(&t);
}

static void test_send_window(void) {
    q_send_tracker t;
    CHECK(q_send_init(&t, 16) == 0);
    send_n(&t, 15, 1.0);
    CHECK(q_send_can_send(&t));
    send_n(&t, 1, 1.0);
    CHECK(!q_send_can_send(&t)); /* next pn - floor == window */
    q_send_free(&t);
}

static void test_receive_tracker_ranges_and_replay(void) {
    q_recv_tracker r;
    CHECK(q_recv_init(&r, 256, 0.025) == 0);
    CHECK(q_recv_check(&r, 1) == Q_PN_NEW);
    q_recv_on_received(&r, 1, 1, 1.0);
    CHECK(q_recv_check(&r, 1) == Q_PN_TOO_OLD && r.cumulative == 2);
    q_recv_on_received(&r, 4, 1, 1.0);
    q_recv_on_received(&r, 5, 1, 1.0);
    q_recv_on_received(&r, 7, 1, 1.0);
    CHECK(q_recv_check(&r, 5) == Q_PN_DUPLICATE);
    CHECK(q_recv_check(&r, 6) == Q_PN_NEW);
    CHECK(q_recv_check(&r, 2 + ((uint64_t)1 << 30) + 1) == Q_PN_BEYOND_WINDOW);
    uint32_t ack;
    q_sack sack[Q_MAX_SACK];
    int n = q_recv_ack_fields(&r, &ack, sack);
    CHECK(ack == 2 && n == 2);
    CHECK(sack[0].start == 7 && sack[0].end == 7 && sack[1].start == 4 && sack[1].end == 5);
    q_recv_on_received(&r, 6, 1, 1.0); /* joins 4..5 and 7 */
    n = q_recv_ack_fields(&r, &ack, sack);
    CHECK(n == 1 && sack[0].start == 4 && sack[0].end == 7);
    q_recv_on_floor(&r, 4); /* 2, 3 abandoned by the sender */
    CHECK(r.cumulative == 8 && r.nranges == 0);
    q_recv_free(&r);
}

static void test_receive_tracker_implicit_floor(void) {
    q_recv_tracker r;
    CHECK(q_recv_init(&r, 16, 0.025) == 0);
    q_recv_on_received(&r, 3, 1, 1.0);
    q_recv_on_received(&r, 20, 1, 1.0); /* >= cumulative (1) + window */
    CHECK(r.cumulative == 5 && r.window_slides == 1); /* 20 - 16 + 1, and 3 was below */
    CHECK(q_recv_check(&r, 4) == Q_PN_TOO_OLD);
    q_recv_free(&r);
}

static void test_delayed_ack_rules(void) {
    q_recv_tracker r;
    CHECK(q_recv_init(&r, 256, 0.025) == 0);
    q_recv_on_received(&r, 1, 1, 1.0);
    CHECK(q_recv_ack_deadline(&r) == 1.025); /* one in order: delayed */
    q_recv_on_received(&r, 2, 1, 1.01);
    CHECK(q_recv_ack_deadline(&r) == 1.01); /* two unacknowledged: at once */
    q_recv_on_ack_sent(&r);
    CHECK(q_recv_ack_deadline(&r) < 0);
    q_recv_on_received(&r, 4, 1, 1.02); /* a gap: at once */
    CHECK(q_recv_ack_deadline(&r) == 1.02);
    q_recv_on_ack_sent(&r);
    q_recv_on_received(&r, 5, 0, 1.03); /* not ack-eliciting: nothing owed */
    CHECK(q_recv_ack_deadline(&r) < 0);
    q_recv_free(&r);
}

void run_reliability_tests(void) {
    RUN(test_rtt_estimator);
    RUN(test_cumulative_ack_and_rtt_sample);
    RUN(test_fast_retransmit_after_three_higher_acks);
    RUN(test_rto_declares_old_packets_lost_and_backs_off);
    RUN(test_floor_announced_once_per_round_trip);
    RUN(test_send_window);
    RUN(test_receive_tracker_ranges_and_replay);
    RUN(test_receive_tracker_implicit_floor);
    RUN(test_delayed_ack_rules);
}
