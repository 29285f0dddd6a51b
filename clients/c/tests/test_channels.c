/* Section 7: fragmentation and round-robin on the way out, the four delivery modes and the
 * receive budget on the way in. */
#include <stdlib.h>

#include "channels.h"
#include "test.h"

typedef struct got {
    int n;
    uint8_t channel[64], mode[64];
    size_t len[64];
    uint8_t first[64];
} got;

static int collect(void *ctx, uint8_t channel, uint8_t mode, const uint8_t *data, size_t len,
                   uint8_t *owned) {
    got *g = ctx;
    if (g->n < 64) {
        g->channel[g->n] = channel;
        g->mode[g->n] = mode;
        g->len[g->n] = len;
        g->first[g->n] = len ? data[0] : 0;
        g->n++;
    }
    free(owned);
    return 0;
}

static int feed(q_receiver *r, uint8_t ch, uint8_t mode, uint32_t id, uint16_t index,
                uint16_t count, const char *data, got *g) {
    const char *why = NULL;
    return q_receiver_on_frame(r, ch, mode, id, index, count, (const uint8_t *)data,
                               (uint16_t)strlen(data), collect, g, &why);
}

static void test_sender_fragments_and_round_robin(void) {
    q_sender *s = q_sender_new();
    CHECK(s != NULL);
    static uint8_t big[2500];
    memset(big, 'x', sizeof big);
    uint32_t id;
    CHECK(q_sender_queue(s, 1, QUANTUM_RELIABLE_ORDERED, big, sizeof big, 1000, &id) == 0);
    CHECK(id == 0);
    CHECK(q_sender_queue(s, 2, QUANTUM_RELIABLE_ORDERED, "a", 1, 1000, &id) == 0 && id == 0);
    CHECK(q_sender_queue(s, 1, QUANTUM_RELIABLE_ORDERED, "b", 1, 1000, &id) == 0 && id == 1);
    q_frag_ref refs[8];
    int n = 0;
    while (n < 8 && q_sender_pop(s, 2000, &refs[n]))
        n++;
    CHECK(n == 5); /* 3 fragments + 2 small messages */
    /* round robin: channel 1 fragment 0, channel 2, channel 1 fragment 1, ... */
    CHECK(refs[0].msg->channel == 1 && refs[0].index == 0);
    CHECK(refs[1].msg->channel == 2);
    CHECK(refs[2].msg->channel == 1 && refs[2].index == 1);
    uint16_t len;
    q_frag_data(&refs[4], &len);
    CHECK(refs[3].index == 2 && len == 1); /* the last fragment: 2500 - 2000 = 500 */
    q_frag_data(&refs[3], &len);
    CHECK(len == 500);
    CHECK(refs[0].msg->count == 3);
    /* a lost fragment comes back before anything new */
    CHECK(q_sender_queue(s, 3, QUANTUM_RELIABLE_ORDERED, "new", 3, 1000, &id) == 0);
    CHECK(q_sender_requeue(s, refs[2]) == 0);
    q_frag_ref again;
    CHECK(q_sender_pop(s, 2000, &again) && again.msg == refs[2].msg && again.index == 1);
    q_sender_release(s, again.msg);
    for (int i = 0; i < n; i++)
        if (i != 2)
            q_sender_release(s, refs[i].msg);
    q_sender_free(s);
}

static void test_sender_refusals(void) {
    q_sender *s = q_sender_new();
    uint32_t id;
    static uint8_t data[2000];
    CHECK(q_sender_queue(s, 0, QUANTUM_UNRELIABLE, data, 1001, 1000, &id) == QUANTUM_E_TOO_LARGE);
    CHECK(q_sender_queue(s, 0, QUANTUM_UNRELIABLE_SEQUENCED, data, 1000, 1000, &id) == 0);
    CHECK(q_sender_queue(s, 0, (uint8_t)4, data, 1, 1000, &id) == QUANTUM_E_INVALID);
    CHECK(q_sender_queue(s, 0, 0, data, QUANTUM_MAX_MESSAGE_SIZE + 1, 1000, &id) ==
          QUANTUM_E_TOO_LARGE);
    /* 1 MiB in 15-byte fragments would need more than 65535 of them */
    static uint8_t mib[QUANTUM_MAX_MESSAGE_SIZE];
    CHECK(q_sender_queue(s, 0, 0, mib, sizeof mib, 15, &id) == QUANTUM_E_TOO_LARGE);
    q_sender_free(s);
}

static void test_ordered_waits_for_the_gap(void) {
    q_receiver *r = q_receiver_new(1 << 20);
    got g = {0};
    CHECK(feed(r, 0, 0, 1, 0, 1, "second", &g) == 0 && g.n == 0);
    CHECK(feed(r, 0, 0, 2, 0, 2, "th", &g) == 0 && g.n == 0);
    CHECK(feed(r, 0, 0, 2, 1, 2, "ird", &g) == 0 && g.n == 0);
    CHECK(feed(r, 0, 0, 0, 0, 1, "first", &g) == 0);
    CHECK(g.n == 3 && g.first[0] == 'f' && g.first[1] == 's' && g.first[2] == 't');
    CHECK(g.len[2] == 5);
    CHECK(feed(r, 0, 0, 1, 0, 1, "second", &g) == 0 && g.n == 3); /* duplicate */
    CHECK(q_receiver_duplicates(r) == 1 && q_receiver_buffered(r) == 0);
    /* another channel is not held back by a gap on channel 0 */
    CHECK(feed(r, 0, 0, 4, 0, 1, "later", &g) == 0 && g.n == 3);
    CHECK(feed(r, 9, 0, 0, 0, 1, "other", &g) == 0 && g.n == 4 && g.channel[3] == 9);
    q_receiver_free(r);
}

static void test_unordered_delivers_at_once_exactly_once(void) {
    q_receiver *r = q_receiver_new(1 << 20);
    got g = {0};
    CHECK(feed(r, 1, 1, 5, 0, 1, "five", &g) == 0 && g.n == 1);
    CHECK(feed(r, 1, 1, 3, 0, 1, "three", &g) == 0 && g.n == 2);
    CHECK(feed(r, 1, 1, 5, 0, 1, "five", &g) == 0 && g.n == 2);
    for (uint32_t id = 0; id < 5; id++)
        feed(r, 1, 1, id, 0, 1, "x", &g);
    CHECK(g.n == 6); /* 0, 1, 2, 4 new; 3 seen */
    CHECK(q_receiver_buffered(r) == 0); /* the ranges collapsed into the watermark */
    q_receiver_free(r);
}

static void test_unreliable_window_and_sequenced(void) {
    q_receiver *r = q_receiver_new(1 << 20);
    got g = {0};
    CHECK(feed(r, 2, 2, 2000, 0, 1, "a", &g) == 0 && g.n == 1);
    CHECK(feed(r, 2, 2, 1990, 0, 1, "b", &g) == 0 && g.n == 2); /* late but new */
    CHECK(feed(r, 2, 2, 1990, 0, 1, "b", &g) == 0 && g.n == 2); /* duplicate */
    CHECK(feed(r, 2, 2, 500, 0, 1, "c", &g) == 0 && g.n == 2);  /* beyond 1024 behind */
    CHECK(feed(r, 2, 3, 10, 0, 1, "s", &g) == 0 && g.n == 3);
    CHECK(feed(r, 2, 3, 9, 0, 1, "s", &g) == 0 && g.n == 3); /* older: stale */
    CHECK(q_receiver_stale(r) == 1);
    CHECK(feed(r, 2, 3, 11, 0, 1, "s", &g) == 0 && g.n == 4);
    /* on a fresh stream, id 2^32 - 1 is the one before id 0: not new */
    CHECK(feed(r, 3, 3, 0xFFFFFFFFu, 0, 1, "w", &g) == 0 && g.n == 4);
    /* ids wrap: stepping less than 2^31 at a time, 5 comes after 0xFFFFFFF0 */
    static const uint32_t steps[] = {0x40000000u, 0x80000000u, 0xC0000000u, 0xFFFFFFF0u, 5};
    for (int i = 0; i < 5; i++)
        CHECK(feed(r, 3, 3, steps[i], 0, 1, "w", &g) == 0 && g.n == 5 + i);
    CHECK(feed(r, 3, 3, 0xFFFFFFFEu, 0, 1, "w", &g) == 0 && g.n == 9); /* before 5: stale */
    q_receiver_free(r);
}

static void test_violations(void) {
    q_receiver *r = q_receiver_new(1 << 20);
    got g = {0};
    CHECK(feed(r, 0, 2, 0, 0, 2, "x", &g) == -1);  /* unreliable with two fragments */
    CHECK(feed(r, 0, 0, 0, 0, 2, "", &g) == -1);   /* empty fragment of a multi-fragment */
    CHECK(feed(r, 0, 1, 0, 0, 3, "a", &g) == 0);
    CHECK(feed(r, 0, 1, 0, 1, 4, "b", &g) == -1);  /* the count changed */
    q_receiver_free(r);
    /* the budget: a peer that makes us buffer more than it is reset */
    r = q_receiver_new(65536);
    static char chunk[1201];
    memset(chunk, 'z', 1200);
    int failed = 0;
    for (uint32_t id = 1; id < 100 && !failed; id++)
        failed = feed(r, 0, 0, id, 0, 1, chunk, &g) == -1; /* all early: id 0 never comes */
    CHECK(failed);
    q_receiver_free(r);
}

void run_channel_tests(void) {
    RUN(test_sender_fragments_and_round_robin);
    RUN(test_sender_refusals);
    RUN(test_ordered_waits_for_the_gap);
    RUN(test_unordered_delivers_at_once_exactly_once);
    RUN(test_unreliable_window_and_sequenced);
    RUN(test_violations);
}
