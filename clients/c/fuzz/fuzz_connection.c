/* libFuzzer target: an established connection fed authenticated packets whose contents the
 * fuzzer chooses, so that everything behind the AEAD (ACK and SACK processing, every frame
 * type, reassembly, FEC recovery, floors, timers) meets hostile input.
 *
 * Input: records of  flags u8, seq u32, ack u32, time step u8 (ms), SACK blocks u8 (mod 9),
 * body length u16, body (the SACK blocks, then the payload). Each record is sealed with the
 * server's key and received; between records the connection sends and runs its timers. A
 * record whose flags have ECE (otherwise unused) uses its own sequence number, so replays
 * and reordering are reachable; the others get fresh packet numbers. Seeds: fuzz/seeds-connection
 * (written by fuzz/make_seeds.py).
 *
 *   make fuzz && build/fuzz/fuzz-connection -max_total_time=600 corpus/ */
#include <netinet/in.h>
#include <stdlib.h>

#include "conn.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void drain(quantum_connection *c, double now) {
    uint8_t out[Q_MAX_DATAGRAM];
    size_t n;
    for (int i = 0; i < 512 && quantum_connection_next_datagram(c, now, out, sizeof out, &n) == 1;
         i++)
        ;
    quantum_event ev;
    while (quantum_connection_next_event(c, &ev) == 1)
        ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(9);
    quantum_credentials cred = {"fuzz", NULL, NULL, NULL, 0, NULL, 0};
    quantum_config cfg;
    quantum_config_default(&cfg);
    cfg.max_receive_buffer = 1 << 20;
    quantum_connection *c;
    static const uint8_t cid[16] = {1, 2, 3};
    if (quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, cid, 0.0) != 0)
        return 0;
    q_schedule s;
    memset(&s, 0x11, sizeof s);
    q_params p = {10, 3, 10000, 60000};
    q_connection_install_keys(c, &s, &p, 0.0);
    q_aead seal;
    q_aead_init(&seal, Q_CIPHER_AES256GCM, s.server_key, s.server_iv);

    uint8_t pkt[Q_MAX_DATAGRAM + 64];
    uint64_t pn = 1;
    /* the SESSION frame first, so the connection is established */
    size_t fl = q_enc_session(pkt + 32, (const uint8_t *)"0123456789abcdef",
                              (const uint8_t *)"t", 1, 1000, 0);
    q_header_encode(pkt, Q_ACK, cid, (uint32_t)pn, 1, (uint16_t)fl);
    q_aead_seal(&seal, pn, pkt, 32, pkt + 32, fl);
    quantum_connection_receive(c, pkt, 32 + fl + 16, &a, sizeof a, 0.01);
    pn++;
    /* something of ours in flight for the acks to act on */
    static uint8_t msg[4000];
    quantum_connection_send(c, 1, QUANTUM_RELIABLE_ORDERED, msg, sizeof msg);
    quantum_connection_send(c, 2, QUANTUM_UNRELIABLE, msg, 10);
    double now = 0.02;
    drain(c, now);

    size_t i = 0;
    while (i + 13 <= size) {
        uint8_t flags = data[i];
        uint32_t seq = q_get32(data + i + 1), ack = q_get32(data + i + 5);
        now += data[i + 9] / 1000.0;
        size_t sack_bytes = (size_t)(data[i + 10] % 9) * 8;
        size_t body = q_get16(data + i + 11);
        i += 13;
        if (body > size - i)
            body = size - i;
        if (body > Q_MAX_DATAGRAM - 48)
            body = Q_MAX_DATAGRAM - 48;
        if (sack_bytes > body)
            sack_bytes = body - body % 8;
        memcpy(pkt + 32, data + i, body);
        i += body;
        /* mostly fresh packet numbers, sometimes the fuzzer's own */
        uint64_t use = (flags & Q_ECE) ? q_expand(seq, pn) : pn++;
        q_header_encode(pkt, (uint8_t)(flags & (uint8_t)~Q_SYN), cid, (uint32_t)use, ack,
                        (uint16_t)(body - sack_bytes));
        q_aead_seal(&seal, use, pkt, 32, pkt + 32, body);
        quantum_connection_receive(c, pkt, 32 + body + 16, &a, sizeof a, now);
        drain(c, now);
        double t = quantum_connection_next_timer(c);
        if (t >= 0 && t <= now + 0.5) {
            quantum_connection_handle_timer(c, t > now ? t : now);
            drain(c, t > now ? t : now);
        }
        if (quantum_connection_state(c) == QUANTUM_STATE_CLOSED)
            break;
    }
    quantum_connection_handle_timer(c, now + 100.0);
    drain(c, now + 100.0);
    quantum_connection_destroy(c);
    return 0;
}
