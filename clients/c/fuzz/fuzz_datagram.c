/* libFuzzer target: the datagram decoder. Every byte string goes through the header, SACK
 * and frame decoders and into a client connection waiting for its server hello (the
 * unauthenticated path), which must drop it or act on it without crashing, leaking or
 * reading out of bounds.
 *
 *   make fuzz && build/fuzz/fuzz-datagram -max_total_time=600 corpus/ */
#include <netinet/in.h>
#include <stdlib.h>

#include "conn.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    q_header h;
    q_sack sack[Q_MAX_SACK];
    int nsack, eliciting;
    const uint8_t *payload;
    if (q_decode_plain(data, size, &h, sack, &nsack, &payload) == 0) {
        q_frames_check(payload, h.payload_len, &eliciting);
        size_t pos = 0;
        q_frame f;
        while (q_frame_next(payload, h.payload_len, &pos, &f) == 1)
            ;
    }
    /* the raw bytes as a payload too */
    q_frames_check(data, size, &eliciting);

    /* a connection in SYN_SENT whose connection id the input carries (bytes 6..22) */
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(9);
    quantum_credentials cred = {"fuzz", NULL, NULL, NULL, 0, NULL, 0};
    uint8_t cid[16] = {0};
    if (size >= 22)
        memcpy(cid, data + 6, 16);
    quantum_connection *c;
    if (quantum_connection_create(&c, NULL, &cred, NULL, &a, sizeof a, cid, 0.0) != 0)
        return 0;
    uint8_t out[Q_MAX_DATAGRAM];
    size_t n;
    while (quantum_connection_next_datagram(c, 0.0, out, sizeof out, &n) == 1)
        ;
    quantum_connection_receive(c, data, size, &a, sizeof a, 0.5);
    while (quantum_connection_next_datagram(c, 0.5, out, sizeof out, &n) == 1)
        ;
    quantum_event ev;
    while (quantum_connection_next_event(c, &ev) == 1)
        ;
    quantum_connection_handle_timer(c, 10.0);
    quantum_connection_destroy(c);
    return 0;
}
