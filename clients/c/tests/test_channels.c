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

/* A whole message. */
static int feed(q_receiver *r, uint8_t ch, uint8_t mode, uint32_t id, const char *data, got *g) {
    const char *why = NULL;
    return q_receiver_on_frame(r, ch, mode, id, 0, 0, 0, (const uint8_t *)data,
                               (uint16_t)strlen(data), collect, g, &why);
}

/* The fragment [offset, offset + strlen(data)) of a message of `total` bytes. */
static int frag(q_receiver *r, uint8_t ch, uint8_t mode, uint32_t id, uint32_t offset,
                uint32_t total, const char *data, got *g) {
    const char *why = NULL;
    return q_receiver_on_frame(r, ch, mode, id, 1, offset, total, (const uint8_t *)data,
                               (uint16_t)strlen(data), collect, g, &why);
}

static void test_sender_fragments_and_round_robin(void) {
    q_sender *s = q_sender_new();
    CHECK(s != NULL);
    static uint8_t big[2500];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)i;
    uint32_t id;
    CHECK(q_sender_queue(s, 1, QUANTUM_RELIABLE_ORDERED, big, sizeof big, &id) == 0);
    CHECK(id == 0);
    CHECK(q_sender_queue(s, 2, QUANTUM_RELIABLE_ORDERED, "a", 1, &id) == 0 && id == 0);
    CHECK(q_sender_queue(s, 1, QUANTUM_RELIABLE_ORDERED, "b", 1, &id) == 0 && id == 1);
    q_frag_ref refs[8];
    int n = 0;
    /* 1017 bytes of room: fragments of 1000 data bytes (17 bytes of frame) */
    while (n < 8 && q_sender_pop(s, 1017, 1017, &refs[n]))
        n++;
    CHECK(n == 5); /* 3 fragments + 2 small messages */
    /* round robin: channel 1's first fragment, channel 2, channel 1's second, ... */
    CHECK(refs[0].msg->channel == 1 && !refs[0].whole && refs[0].offset == 0);
    CHECK(refs[0].len == 1000 && q_frag_frame_size(&refs[0]) == 1017);
    CHECK(refs[1].msg->channel == 2 && refs[1].whole && q_frag_frame_size(&refs[1]) == 10);
    CHECK(refs[2].msg->channel == 1 && refs[2].offset == 1000 && refs[2].len == 1000);
    CHECK(refs[3].offset == 2000 && refs[3].len == 500 && !refs[3].whole);
    CHECK(refs[4].whole && refs[4].len == 1 && q_frag_data(&refs[4])[0] == 'b');
    CHECK(q_frag_data(&refs[3])[0] == (uint8_t)2000);
    /* a lost fragment comes back, the same frame, before anything new */
    CHECK(q_sender_queue(s, 3, QUANTUM_RELIABLE_ORDERED, "new", 3, &id) == 0);
    CHECK(q_sender_requeue(s, refs[2]) == 0);
    q_frag_ref again;
    CHECK(!q_sender_pop(s, 1016, 1017, &again) || again.msg != refs[2].msg); /* too small */
    if (again.msg != refs[2].msg) {
        q_sender_release(s, again.msg);
        CHECK(q_sender_pop(s, 1017, 1017, &again));
    }
    CHECK(again.msg == refs[2].msg && again.offset == 1000 && again.len == 1000);
    q_sender_release(s, again.msg);
    for (int i = 0; i < n; i++)
        if (i != 2)
            q_sender_release(s, refs[i].msg);
    q_sender_free(s);
}

static void test_sender_cuts_to_the_room(void) {
    q_sender *s = q_sender_new();
    uint32_t id;
    static uint8_t data[3000];
    CHECK(q_sender_queue(s, 0, QUANTUM_RELIABLE_UNORDERED, data, 900, &id) == 0);
    q_frag_ref r;
    /* fits whole in an empty packet (1088): not fragmented into a 500-byte room */
    CHECK(!q_sender_pop(s, 500, 1088, &r));
    CHECK(q_sender_pop(s, 1088, 1088, &r) && r.whole && r.len == 900);
    q_sender_release(s, r.msg);
    /* larger than a packet: fragments as large as each packet's room */
    CHECK(q_sender_queue(s, 0, QUANTUM_RELIABLE_UNORDERED, data, 3000, &id) == 0);
    CHECK(q_sender_pop(s, 517, 1088, &r) && !r.whole && r.offset == 0 && r.len == 500);
    q_sender_release(s, r.msg);
    CHECK(!q_sender_pop(s, 17 + 63, 1088, &r)); /* not a sliver of under 64 bytes */
    CHECK(q_sender_pop(s, 1088, 1088, &r) && r.offset == 500 && r.len == 1071);
    q_sender_release(s, r.msg);
    CHECK(q_sender_pop(s, 1088, 1088, &r) && r.offset == 1571 && r.len == 1071);
    q_sender_release(s, r.msg);
    CHECK(q_sender_pop(s, 17 + 64, 1088, &r) && r.offset == 2642 && r.len == 64);
    q_sender_release(s, r.msg);
    CHECK(q_sender_pop(s, 1088, 1088, &r) && r.offset == 2706 && r.len == 294);
    q_sender_release(s, r.msg);
    CHECK(!q_sender_has_pending(s) && s->all == NULL && s->pending_bytes == 0);
    /* unreliable messages are never fragmented */
    CHECK(q_sender_queue(s, 0, QUANTUM_UNRELIABLE, data, 1000, &id) == 0);
    CHECK(!q_sender_pop(s, 1000, 1088, &r));
    CHECK(q_sender_pop(s, 1009, 1088, &r) && r.whole);
    q_sender_release(s, r.msg);
    /* with FEC k = 32 a packet carries 1012 bytes: a 1024-byte unreliable message can never
     * go; it is dropped instead of blocking the channel */
    CHECK(q_sender_queue(s, 4, QUANTUM_UNRELIABLE, data, 1024, &id) == 0);
    CHECK(q_sender_queue(s, 4, QUANTUM_UNRELIABLE, data, 10, &id) == 0);
    CHECK(q_sender_pop(s, 1012, 1012, &r) && r.whole && r.len == 10 && s->unsendable == 1);
    q_sender_release(s, r.msg);
    CHECK(!q_sender_has_pending(s) && s->pending_bytes == 0);
    q_sender_free(s);
}

static void test_sender_refusals(void) {
    q_sender *s = q_sender_new();
    uint32_t id;
    static uint8_t data[2000];
    CHECK(q_sender_queue(s, 0, QUANTUM_UNRELIABLE, data, 1025, &id) == QUANTUM_E_TOO_LARGE);
    CHECK(q_sender_queue(s, 0, QUANTUM_UNRELIABLE_SEQUENCED, data, 1024, &id) == 0);
    CHECK(q_sender_queue(s, 0, (uint8_t)4, data, 1, &id) == QUANTUM_E_INVALID);
    CHECK(q_sender_queue(s, 0, 0, data, QUANTUM_MAX_MESSAGE_SIZE + 1, &id) ==
          QUANTUM_E_TOO_LARGE);
    q_sender_free(s);
}

static void test_ordered_waits_for_the_gap(void) {
    q_receiver *r = q_receiver_new(1 << 20);
    got g = {0};
    CHECK(feed(r, 0, 0, 1, "second", &g) == 0 && g.n == 0);
    CHECK(frag(r, 0, 0, 2, 2, 5, "ird", &g) == 0 && g.n == 0);
    CHECK(frag(r, 0, 0, 2, 0, 5, "th", &g) == 0 && g.n == 0);
    CHECK(feed(r, 0, 0, 0, "first", &g) == 0);
    CHECK(g.n == 3 && g.first[0] == 'f' && g.first[1] == 's' && g.first[2] == 't');
    CHECK(g.len[2] == 5);
    CHECK(feed(r, 0, 0, 1, "second", &g) == 0 && g.n == 3); /* duplicate */
    CHECK(q_receiver_duplicates(r) == 1 && q_receiver_buffered(r) == 0);
    /* another channel is not held back by a gap on channel 0 */
    CHECK(feed(r, 0, 0, 4, "later", &g) == 0 && g.n == 3);
    CHECK(feed(r, 9, 0, 0, "other", &g) == 0 && g.n == 4 && g.channel[3] == 9);
    q_receiver_free(r);
}

static void test_unordered_delivers_at_once_exactly_once(void) {
    q_receiver *r = q_receiver_new(1 << 20);
    got g = {0};
    CHECK(feed(r, 1, 1, 5, "five", &g) == 0 && g.n == 1);
    CHECK(feed(r, 1, 1, 3, "three", &g) == 0 && g.n == 2);
    CHECK(feed(r, 1, 1, 5, "five", &g) == 0 && g.n == 2);
    for (uint32_t id = 0; id < 5; id++)
        feed(r, 1, 1, id, "x", &g);
    CHECK(g.n == 6); /* 0, 1, 2, 4 new; 3 seen */
    CHECK(q_receiver_buffered(r) == 0); /* the ranges collapsed into the watermark */
    q_receiver_free(r);
}

static void test_unreliable_window_and_sequenced(void) {
    q_receiver *r = q_receiver_new(1 << 20);
    got g = {0};
    CHECK(feed(r, 2, 2, 2000, "a", &g) == 0 && g.n == 1);
    CHECK(feed(r, 2, 2, 1990, "b", &g) == 0 && g.n == 2); /* late but new */
    CHECK(feed(r, 2, 2, 1990, "b", &g) == 0 && g.n == 2); /* duplicate */
    CHECK(feed(r, 2, 2, 500, "c", &g) == 0 && g.n == 2);  /* beyond 1024 behind */
    CHECK(feed(r, 2, 3, 10, "s", &g) == 0 && g.n == 3);
    CHECK(feed(r, 2, 3, 9, "s", &g) == 0 && g.n == 3); /* older: stale */
    CHECK(q_receiver_stale(r) == 1);
    CHECK(feed(r, 2, 3, 11, "s", &g) == 0 && g.n == 4);
    /* on a fresh stream, id 2^32 - 1 is the one before id 0: not new */
    CHECK(feed(r, 3, 3, 0xFFFFFFFFu, "w", &g) == 0 && g.n == 4);
    /* ids wrap: stepping less than 2^31 at a time, 5 comes after 0xFFFFFFF0 */
    static const uint32_t steps[] = {0x40000000u, 0x80000000u, 0xC0000000u, 0xFFFFFFF0u, 5};
    for (int i = 0; i < 5; i++)
        CHECK(feed(r, 3, 3, steps[i], "w", &g) == 0 && g.n == 5 + i);
    CHECK(feed(r, 3, 3, 0xFFFFFFFEu, "w", &g) == 0 && g.n == 9); /* before 5: stale */
    q_receiver_free(r);
}

static void test_reassembly_is_a_union_of_ranges(void) {
    q_receiver *r = q_receiver_new(4 << 20);
    got g = {0};
    /* "abcdefghij" in overlapping pieces, out of order */
    CHECK(frag(r, 0, 1, 0, 6, 10, "ghij", &g) == 0 && g.n == 0);
    CHECK(frag(r, 0, 1, 0, 2, 10, "cd", &g) == 0 && g.n == 0);
    CHECK(frag(r, 0, 1, 0, 7, 10, "hi", &g) == 0 && q_receiver_duplicates(r) == 1); /* inside */
    size_t before = q_receiver_buffered(r);
    CHECK(frag(r, 0, 1, 0, 1, 10, "bcdefg", &g) == 0 && g.n == 0); /* spans both: closes 4..6 */
    /* the bytes charged: 1 (b) + 2 (ef) new, the three ranges merged into one */
    CHECK(q_receiver_buffered(r) == before + 3 + 2 * 64 - 2 * 64 - 64);
    CHECK(frag(r, 0, 1, 0, 0, 10, "ab", &g) == 0);
    CHECK(g.n == 1 && g.len[0] == 10 && g.first[0] == 'a');
    CHECK(q_receiver_buffered(r) == 0);
    /* a late fragment of a delivered message is a duplicate */
    CHECK(frag(r, 0, 1, 0, 3, 10, "d", &g) == 0 && g.n == 1);
    /* a whole copy of a message under reassembly completes it (a late original after its
     * split retransmission) */
    CHECK(frag(r, 0, 1, 1, 0, 3, "x", &g) == 0 && g.n == 1);
    CHECK(feed(r, 0, 1, 1, "xyz", &g) == 0 && g.n == 2 && g.len[1] == 3);
    CHECK(q_receiver_buffered(r) == 0);
    CHECK(frag(r, 0, 1, 1, 1, 3, "yz", &g) == 0 && g.n == 2);
    /* a 1 MiB message in 1071-byte fragments, last first */
    static char piece[1072];
    memset(piece, 'm', 1071);
    uint32_t total = QUANTUM_MAX_MESSAGE_SIZE;
    uint32_t last = total - total % 1071;
    CHECK(frag(r, 5, 0, 0, last, total, piece + 1071 - total % 1071, &g) == 0);
    for (uint32_t off = 0; off < last; off += 1071)
        CHECK(frag(r, 5, 0, 0, off, total, piece, &g) == 0);
    CHECK(g.n == 3 && g.len[2] == total && g.channel[2] == 5 && q_receiver_buffered(r) == 0);
    q_receiver_free(r);
}

static void test_violations(void) {
    q_receiver *r = q_receiver_new(1 << 20);
    got g = {0};
    CHECK(frag(r, 0, 2, 0, 0, 2, "x", &g) == -1);   /* unreliable in fragments */
    CHECK(frag(r, 0, 0, 0, 0, 2, "", &g) == -1);    /* an empty fragment */
    CHECK(frag(r, 0, 0, 0, 2, 3, "ab", &g) == -1);  /* beyond the total */
    CHECK(frag(r, 0, 0, 0, 0, QUANTUM_MAX_MESSAGE_SIZE + 1, "a", &g) == -1);
    CHECK(frag(r, 0, 1, 0, 0, 3, "a", &g) == 0);
    CHECK(frag(r, 0, 1, 0, 1, 4, "b", &g) == -1);   /* the total changed */
    q_receiver_free(r);
    /* the budget: a peer that makes us buffer more than it is reset */
    r = q_receiver_new(65536);
    static char chunk[1201];
    memset(chunk, 'z', 1200);
    int failed = 0;
    for (uint32_t id = 1; id < 100 && !failed; id++)
        failed = feed(r, 0, 0, id, chunk, &g) == -1; /* all early: id 0 never comes */
    CHECK(failed);
    q_receiver_free(r);
    /* ... and many tiny ranges of one message cost their bookkeeping too */
    r = q_receiver_new(65536);
    failed = 0;
    for (uint32_t off = 0; off < 1000000 && !failed; off += 2)
        failed = frag(r, 0, 0, 0, off, QUANTUM_MAX_MESSAGE_SIZE, "z", &g) == -1;
    CHECK(failed && q_receiver_buffered(r) <= 65536);
    q_receiver_free(r);
}

void run_channel_tests(void) {
    RUN(test_sender_fragments_and_round_robin);
    RUN(test_sender_cuts_to_the_room);
    RUN(test_sender_refusals);
    RUN(test_reassembly_is_a_union_of_ranges);
    RUN(test_ordered_waits_for_the_gap);
    RUN(test_unordered_delivers_at_once_exactly_once);
    RUN(test_unreliable_window_and_sequenced);
    RUN(test_violations);
}
