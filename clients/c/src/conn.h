/* The connection object (docs/PROTOCOL.md section 10): internal layout, shared by the
 * connection module, the unit tests and the fuzz harness. */
#ifndef Q_CONN_H
#define Q_CONN_H

#include <sys/socket.h>

#include "aead.h"
#include "bbr.h"
#include "channels.h"
#include "common.h"
#include "fec.h"
#include "handshake.h"
#include "reliability.h"

/* Reliable fragments one packet may carry (their references are kept per packet slot). */
#define Q_REFS_PER_PACKET 32
#define Q_KEEPALIVES_PENDING 64
#define Q_HEARTBEATS 8
#define Q_PATH_RESPONSES 4
#define Q_PENDING_OUT 4
#define Q_KEY_LIMIT_HEADROOM 1024
#define Q_MIGRATION_AMPLIFICATION 3

typedef struct q_ev {
    int32_t type;
    uint8_t channel, mode, resumed, by_peer;
    uint32_t keepalive_id, remaining_ms;
    uint16_t code;
    double rtt;
    size_t data_off, data_len;  /* in the event arena, unless owned */
    uint8_t *owned;             /* a reassembled message handed over whole */
    size_t reason_off, reason_len;
    uint8_t session_id[16];
    char token[QUANTUM_MAX_TOKEN + 4];
} q_ev;

typedef struct q_keepalive_pending {
    uint32_t id;
    int used, spent; /* spent: its heartbeat was already answered by another id */
    int heartbeat;   /* index into heartbeats, or -1 */
    double sent_at;
} q_keepalive_pending;

typedef struct q_heartbeat {
    int used;
    uint32_t id; /* the first keepalive's id: what the application is told */
    double deadline, next_resend;
} q_heartbeat;

struct quantum_connection {
    quantum_config cfg;
    quantum_state state;
    uint8_t cid[Q_CID_SIZE];
    struct sockaddr_storage peer, previous;
    size_t peer_len, previous_len;

    /* handshake (client) */
    q_client_hs *hs;
    int hs_tries;
    double hs_deadline, hs_resend_at, hs_sent_at;
    int hs_resend_set, hs_out_pending;
    size_t hs_out_len;
    uint8_t server_public[32];
    int has_server_public;

    /* packet protection */
    q_dir_keys seal, open;
    int have_keys;
    int seal_acked;          /* a packet sealed with the current generation was acknowledged */
    q_params params;
    int fec_on;
    double keepalive_interval, idle_timeout; /* effective: ours, capped by the server's */

    /* reliability and congestion control */
    q_send_tracker sent;
    q_recv_tracker recv;
    q_bbr cc;
    q_frag_ref *refs;  /* window x Q_REFS_PER_PACKET, by packet slot; built by the first send */
    uint32_t max_datagram;   /* what we send: BASE_DATAGRAM (no PMTU probing) */
    size_t data_room;        /* D: payload bytes of a packet carrying MESSAGE frames */

    /* channels */
    q_sender *sender;
    q_receiver *receiver;

    /* control frames waiting for the next packet */
    uint32_t ka_out[Q_KEEPALIVES_PENDING];
    int ka_out_n;
    uint32_t ka_acks[Q_KEEPALIVES_PENDING]; /* KEEPALIVE_ACKs we owe (server keepalives) */
    int ka_acks_n;
    int floor_pending;
    uint32_t floor_value;
    uint8_t path_responses[Q_PATH_RESPONSES][8];
    int path_responses_n;
    int challenge_pending;

    /* path validation (10.5) */
    int path_validated, has_challenge;
    uint8_t challenge[8];
    int64_t path_budget;

    /* keepalives */
    uint32_t keepalive_id;
    double last_keepalive_sent;
    q_keepalive_pending ka_pending[Q_KEEPALIVES_PENDING]; /* slot: id mod Q_KEEPALIVES_PENDING */
    q_heartbeat heartbeats[Q_HEARTBEATS];

    /* FEC */
    q_fec_encoder *encoder;
    q_fec_decoder *decoder;

    /* closing */
    int fin_sent, fin_acked, close_deadline_set;
    uint64_t fin_pn;
    double close_deadline;
    uint16_t close_code;
    uint16_t close_reason_len;

    uint64_t largest_pn;
    double last_received, now;


    /* events */
    q_ev *events;
    size_t ev_head, ev_len, ev_cap;
    q_buf ev_data;
    uint8_t *last_owned; /* the message buffer of the event popped last, freed next call */

    /* the session the server gave us */
    uint8_t session_id[16];
    char session_token[QUANTUM_MAX_TOKEN + 1];
    int has_session;

    quantum_stats stats;
    uint64_t lost_with_frames; /* scratch of the loss callbacks */
    int pending_out_n;

    /* the big buffers last, so that what every packet touches shares few cache lines */
    uint8_t rx[Q_MAX_DATAGRAM]; /* a received body, decrypted here */
    /* sealed datagrams built while receiving (the ACK of a FIN, a reset) */
    size_t pending_out_len[Q_PENDING_OUT];
    uint8_t pending_out[Q_PENDING_OUT][Q_MAX_DATAGRAM];
    uint8_t hs_out[Q_MAX_DATAGRAM];
    uint8_t close_reason[Q_MAX_REASON + 1];
    q_fec_recovered recovered; /* scratch for one rebuilt packet */
};

/* For the unit tests and the fuzz harness: skip the handshake and install keys and params
 * as if the server hello had been verified (state AWAIT_ACCEPT). */
int q_connection_install_keys(quantum_connection *c, const q_schedule *s, const q_params *p,
                              double now);
int q_addr_equal(const void *a, size_t alen, const void *b, size_t blen);

#endif
