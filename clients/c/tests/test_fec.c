/* Section 9: the zfec-compatible code, the sender's groups and the receiver's recovery.
 * (tests/test_c_fec.py compares the parity with zfec's for many random inputs.) */
#include <stdlib.h>

#include "fec.h"
#include "test.h"

static void test_parity_matches_zfec_examples(void) {
    /* zfec.Encoder(3, 5).encode([b"abcd", b"efgh", b"ijkl"], [3, 4]) and
     * zfec.Encoder(1, 3).encode([b"xyz"], [1, 2]) (k = 1 is replication) */
    const uint8_t *data[3] = {(const uint8_t *)"abcd", (const uint8_t *)"efgh",
                              (const uint8_t *)"ijkl"};
    uint8_t p0[4], p1[4];
    uint8_t *parity[2] = {p0, p1};
    CHECK(quantum_fec_encode(3, 2, data, 4, parity) == 0);
    CHECK(bytes_equal_hex(p0, 4, "71727334") && bytes_equal_hex(p1, 4, "414243d9"));
    const uint8_t *one[1] = {(const uint8_t *)"xyz"};
    CHECK(quantum_fec_encode(1, 2, one, 3, parity) == 0);
    CHECK(memcmp(p0, "xyz", 3) == 0 && memcmp(p1, "xyz", 3) == 0);
    CHECK(quantum_fec_encode(33, 1, data, 4, parity) == QUANTUM_E_INVALID);
}

static void test_partial_parity(void) {
    CHECK(q_fec_partial_parity(10, 3, 1) == 2); /* ceil(0.3) + 1 */
    CHECK(q_fec_partial_parity(10, 3, 5) == 3); /* ceil(1.5) + 1, capped at m */
    CHECK(q_fec_partial_parity(10, 3, 9) == 3);
}

/* Encode a group with the sender, lose `lost` (bit mask) of its data packets, and recover
 * them with the receiver from the parity. */
static int roundtrip(int k, int m, uint32_t lost, uint32_t seed) {
    q_fec_encoder *e = q_fec_encoder_new(k, m);
    q_fec_decoder *d = q_fec_decoder_new();
    static uint8_t payloads[Q_FEC_MAX_K][Q_MAX_PAYLOAD];
    uint16_t lens[Q_FEC_MAX_K];
    uint64_t pns[Q_FEC_MAX_K];
    const char *why = NULL;
    int ok = e && d;
    for (int i = 0; ok && i < k; i++) {
        pns[i] = 100 + (uint64_t)i * 2;
        lens[i] = (uint16_t)((seed * 7919u + (uint32_t)i * 104729u) % 1300 + 1);
        for (int j = 0; j < lens[i]; j++)
            payloads[i][j] = (uint8_t)(seed + (uint32_t)i * 31u + (uint32_t)j);
        q_fec_encoder_add(e, pns[i], payloads[i], lens[i]);
        if (!(lost >> i & 1))
            ok = q_fec_on_data(d, pns[i], payloads[i], lens[i], &why) == 0;
    }
    ok = ok && q_fec_parity_pending(e) && e->out_count == m && e->out_k == k;
    for (int p = 0; ok && p < m; p++)
        ok = q_fec_on_parity(d, e->out_group, m, p, pns, k, e->shards[p], e->out_size, &why) == 0;
    q_fec_recovered r;
    int recovered = 0;
    while (ok && q_fec_next_recovered(d, &r)) {
        int i = (int)(r.pn - 100) / 2;
        ok = (lost >> i & 1) && r.len == lens[i] && memcmp(r.data, payloads[i], r.len) == 0;
        recovered++;
    }
    int want = 0;
    for (int i = 0; i < k; i++)
        want += (int)(lost >> i & 1);
    free(e);
    q_fec_decoder_free(d);
    return ok && recovered == want;
}

static void test_recovers_up_to_m_losses(void) {
    CHECK(roundtrip(10, 3, 0x001, 1));
    CHECK(roundtrip(10, 3, 0x205, 2)); /* three lost, three parity */
    CHECK(roundtrip(1, 1, 0x1, 3));
    CHECK(roundtrip(16, 16, 0xFFFF, 4)); /* everything from parity alone */
    CHECK(roundtrip(32, 4, 0x80000007u, 5));
    for (uint32_t s = 0; s < 40; s++) { /* random patterns of at most m losses */
        int k = (int)(s % 12) + 1, m = (int)(s % 4) + 1;
        uint32_t lost = 0;
        for (int i = 0; i < m; i++)
            lost |= 1u << ((s * 13u + (uint32_t)i * 5u) % (uint32_t)k);
        CHECK(roundtrip(k, m, lost, s));
    }
}

static void test_decoder_refusals(void) {
    q_fec_decoder *d = q_fec_decoder_new();
    const char *why = NULL;
    uint64_t pns[2] = {1, 1};
    uint8_t shard[8] = {0};
    CHECK(q_fec_on_parity(d, 0, 1, 0, pns, 2, shard, 8, &why) == -1); /* a pn named twice */
    pns[1] = 2;
    CHECK(q_fec_on_parity(d, 0, 2, 2, pns, 2, shard, 8, &why) == -1); /* index >= m */
    CHECK(q_fec_on_parity(d, 0, 17, 0, pns, 2, shard, 8, &why) == -1); /* m > 16 */
    CHECK(q_fec_on_parity(d, 0, 2, 0, pns, 2, shard, 1, &why) == -1);  /* no length prefix */
    CHECK(q_fec_on_parity(d, 0, 2, 0, pns, 2, shard, 8, &why) == 0);
    CHECK(q_fec_on_parity(d, 0, 2, 1, pns, 2, shard, 9, &why) == -1); /* contradicts size */
    uint8_t big[20] = {0};
    CHECK(q_fec_on_data(d, 1, big, 20, &why) == -1); /* longer than the group's shards */
    q_fec_decoder_free(d);
}

void run_fec_tests(void) {
    RUN(test_parity_matches_zfec_examples);
    RUN(test_partial_parity);
    RUN(test_recovers_up_to_m_losses);
    RUN(test_decoder_refusals);
}
