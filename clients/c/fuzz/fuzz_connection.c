/* libFuzzer target: an established connection fed authenticated packets whose contents the
 * fuzzer chooses, so that everything behind the AEAD (ACK and SACK processing, every frame
 * type, reassembly, FEC recovery, floors, timers) meets hostile input.
 *
 * Input: records of  flags u8, seq u32, ack u32, time step u8 (ms), control u8, body length
 * u16, body (the SACK blocks, then the payload). Control: bits 0..3 the SACK blocks (mod 9);
 * bit 6: the server moves to its next key generation before this record (key update); bit 7:
 * the record uses its own sequence number (replays, reordering, packets of the previous
 * generation), else a fresh one. Each record is sealed with the server's current keys and
 * received; the KEY_PHASE bit is the generation's, flipped when the record's flags have it
 * (a packet the client must not open). Between records the connection sends and runs its
 * timers. Seeds: fuzz/seeds-connection (written by fuzz/make_seeds.py).
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
    s.cipher = q_cipher_available(Q_CIPHER_AES256GCM) ? Q_CIPHER_AES256GCM
                                                       : Q_CIPHER_CHACHA20POLY1305;
    q_params p = {10, 3, 10000, 60000};
    q_connection_install_keys(c, &s, &p, 0.0);
    q_dir_keys seal; /* the server's sending keys */
    q_keys_init(&seal, s.cipher, s.server_secret);

    uint8_t pkt[Q_MAX_DATAGRAM + 64];
    uint64_t pn = 1;
    /* the SESSION frame first, so the connection is established */
    size_t fl = q_enc_session(pkt + 32, (const uint8_t *)"0123456789abcdef",
                              (const uint8_t *)"t", 1, 1000, 0);
    q_header_encode(pkt, Q_ACK, cid, (uint32_t)pn, 1, (uint16_t)fl);
    q_keys_seal(&seal, pn, pkt, 32, pkt + 32, fl);
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
        uint8_t control = data[i + 10];
        size_t sack_bytes = (size_t)((control & 0x0F) % 9) * 8;
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
        if ((control & 0x40) && seal.generation < 64)
            q_keys_update(&seal);
        /* mostly fresh packet numbers, sometimes the fuzzer's own */
        uint64_t use = (control & 0x80) ? q_expand(seq, pn) : pn++;
        uint8_t hflags = (uint8_t)((flags & (uint8_t)~(Q_SYN | Q_KEY_PHASE)) |
                                   (q_keys_phase_flag(&seal) ^ (flags & Q_KEY_PHASE)));
        q_header_encode(pkt, hflags, cid, (uint32_t)use, ack, (uint16_t)(body - sack_bytes));
        q_keys_seal(&seal, use, pkt, 32, pkt + 32, body);
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
    q_keys_wipe(&seal);
    return 0;
}
