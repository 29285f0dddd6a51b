/* The client connection, sans-I/O: docs/PROTOCOL.md section 10 (reference:
 * quantum/connection.py). Everything with an algorithm of its own lives in its own module;
 * this one wires them together:
 *
 *   wire codec ..... wire.c          reliability .... reliability.c
 *   channels ....... channels.c      congestion ..... bbr.c
 *   FEC ............ fec.c           keys, AEAD ..... handshake.c, aead.c
 *
 * States: SYN_SENT -> AWAIT_ACCEPT -> ESTABLISHED -> CLOSING -> CLOSED. */
#include <netinet/in.h>
#include <stdlib.h>

#include "conn.h"
#include "wire.h"

static void terminate(quantum_connection *c, uint16_t code, const uint8_t *reason, size_t len,
                      int by_peer);

/* The build's default cipher offer: make CFLAGS=-DQUANTUM_DEFAULT_CIPHER_PREFERENCE=1 (or
 * CIPHERS=chacha-first, see the Makefile) builds a library that offers ChaCha20-Poly1305
 * first unless the configuration says otherwise. */
#ifndef QUANTUM_DEFAULT_CIPHER_PREFERENCE
#define QUANTUM_DEFAULT_CIPHER_PREFERENCE QUANTUM_CIPHERS_AUTO
#endif

/* ------------------------------------------------------------------------------ events */

static q_ev *push_event(quantum_connection *c, int32_t type) {
    if (c->ev_head + c->ev_len == c->ev_cap) {
        if (c->ev_head) { /* compact before growing */
            memmove(c->events, c->events + c->ev_head, c->ev_len * sizeof *c->events);
            c->ev_head = 0;
        } else {
            size_t cap = c->ev_cap ? c->ev_cap * 2 : 16;
            q_ev *grown = realloc(c->events, cap * sizeof *grown);
            if (!grown)
                return NULL;
            c->events = grown;
            c->ev_cap = cap;
        }
    }
    q_ev *e = &c->events[c->ev_head + c->ev_len++];
    memset(e, 0, sizeof *e);
    e->type = type;
    e->rtt = -1.0;
    return e;
}

/* At the start of every call that can add events: the data of the event popped last may go. */
static void begin_call(quantum_connection *c) {
    free(c->last_owned);
    c->last_owned = NULL;
    if (c->ev_len == 0) {
        c->ev_head = 0;
        c->ev_data.len = 0;
    }
}

static int deliver(void *ctx, uint8_t channel, uint8_t mode, const uint8_t *data, size_t len,
                   uint8_t *owned) {
    quantum_connection *c = ctx;
    q_ev *e = push_event(c, QUANTUM_EVENT_MESSAGE);
    if (!e) {
        free(owned);
        return QUANTUM_E_NOMEM;
    }
    e->channel = channel;
    e->mode = mode;
    e->data_len = len;
    if (owned) {
        e->owned = owned;
    } else {
        size_t at = q_buf_append(&c->ev_data, data, len);
        if (at == (size_t)-1) {
            c->ev_len--;
            return QUANTUM_E_NOMEM;
        }
        e->data_off = at;
    }
    c->stats.messages_received++;
    return 0;
}

int quantum_connection_next_event(quantum_connection *c, quantum_event *out) {
    if (!c || !out)
        return QUANTUM_E_INVALID;
    begin_call(c);
    if (c->ev_len == 0)
        return 0;
    q_ev *e = &c->events[c->ev_head++];
    c->ev_len--;
    memset(out, 0, sizeof *out);
    out->type = e->type;
    out->channel = e->channel;
    out->mode = e->mode;
    out->resumed = e->resumed;
    out->by_peer = e->by_peer;
    out->keepalive_id = e->keepalive_id;
    out->remaining_ms = e->remaining_ms;
    out->code = e->code;
    out->rtt = e->rtt;
    out->length = e->data_len;
    if (e->owned) {
        out->data = e->owned;
        c->last_owned = e->owned;
    } else if (e->type == QUANTUM_EVENT_MESSAGE) {
        out->data = c->ev_data.data ? c->ev_data.data + e->data_off : (const uint8_t *)"";
    }
    if (e->type == QUANTUM_EVENT_DISCONNECTED) {
        out->reason = e->reason_off == (size_t)-1 ? ""
                                                  : (const char *)c->ev_data.data + e->reason_off;
        out->reason_length = e->reason_len;
    }
    memcpy(out->session_id, e->session_id, 16);
    memcpy(out->session_token, e->token, sizeof out->session_token);
    return 1;
}

/* ------------------------------------------------------------------------- addresses */

int q_addr_equal(const void *a, size_t alen, const void *b, size_t blen) {
    const struct sockaddr *x = a, *y = b;
    if (!a || !b || alen < sizeof(sa_family_t) || blen < sizeof(sa_family_t) ||
        x->sa_family != y->sa_family)
        return 0;
    if (x->sa_family == AF_INET && alen >= sizeof(struct sockaddr_in) &&
        blen >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *p = a, *q = b;
        return p->sin_port == q->sin_port && p->sin_addr.s_addr == q->sin_addr.s_addr;
    }
    if (x->sa_family == AF_INET6 && alen >= sizeof(struct sockaddr_in6) &&
        blen >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *p = a, *q = b;
        return p->sin6_port == q->sin6_port && p->sin6_scope_id == q->sin6_scope_id &&
               memcmp(&p->sin6_addr, &q->sin6_addr, sizeof p->sin6_addr) == 0;
    }
    return 0;
}

/* --------------------------------------------------------------------------- creation */

void quantum_config_default(quantum_config *c) {
    memset(c, 0, sizeof *c);
    c->keepalive_interval = 10.0;
    c->idle_timeout = 60.0;
    c->handshake_timeout = 5.0;
    c->handshake_tries = 5;
    c->fec_k = 10;
    c->fec_m = 3;
    c->window = 256;
    c->max_ack_delay = 0.025;
    c->close_timeout = 3.0;
    c->packets_per_key = (uint64_t)1 << 23;
    c->max_receive_buffer = (size_t)4 << 20;
    c->max_datagram = Q_BASE_DATAGRAM;
    c->key_update_packets = (uint64_t)1 << 22;
    c->cipher_preference = QUANTUM_DEFAULT_CIPHER_PREFERENCE;
    c->auto_reconnect = 1;
    c->reconnect_initial_delay = 0.5;
    c->reconnect_max_delay = 30.0;
    c->reconnect_max_attempts = 10;
    c->resume_fallback = 0;
}

static int config_valid(const quantum_config *c) {
    int fec_off = c->fec_k == 0 && c->fec_m == 0;
    int fec_ok = c->fec_k >= 1 && c->fec_k <= 16 && c->fec_m >= 1 && c->fec_m <= 16;
    return c->keepalive_interval >= 0 && c->idle_timeout > 0 && c->handshake_timeout > 0 &&
           c->handshake_tries >= 1 && (fec_off || fec_ok) && c->window >= 16 &&
           c->window <= 4096 && c->max_ack_delay > 0 && c->max_ack_delay <= 0.5 &&
           c->close_timeout > 0 && c->packets_per_key >= 2 * Q_KEY_LIMIT_HEADROOM &&
           c->packets_per_key <= (uint64_t)1 << 62 && c->max_receive_buffer >= 65536 &&
           c->max_datagram == Q_BASE_DATAGRAM && c->key_update_packets >= 16 &&
           c->key_update_packets < c->packets_per_key - Q_KEY_LIMIT_HEADROOM &&
           c->cipher_preference >= QUANTUM_CIPHERS_AUTO &&
           c->cipher_preference <= QUANTUM_CIPHERS_AES_ONLY &&
           c->reconnect_initial_delay > 0 && c->reconnect_max_delay >= c->reconnect_initial_delay &&
           c->reconnect_max_attempts >= 0;
}

/* The data payload cap D follows the datagram size P (section 2): room for eight SACK blocks
 * always (P - 112), and with FEC (k data packets a group) for the parity packet, whose payload
 * is 12 + 4k + the longest data payload: P - 60 - 4k. */
static void compute_sizes(quantum_connection *c) {
    size_t p = c->max_datagram;
    size_t room = p - Q_HEADER_SIZE - 8 * Q_MAX_SACK - Q_TAG_SIZE;
    if (c->fec_on)
        room = q_min_z(room, p - 60 - 4 * (size_t)c->params.fec_k);
    c->data_room = room;
}

static void send_handshake_packet(quantum_connection *c, uint8_t flags, const uint8_t *payload,
                                  size_t len, double now) {
    c->hs_tries++;
    q_header_encode(c->hs_out, flags, c->cid, 0, 0, (uint16_t)len);
    memcpy(c->hs_out + Q_HEADER_SIZE, payload, len);
    c->hs_out_len = Q_HEADER_SIZE + len;
    c->hs_out_pending = 1;
    c->hs_sent_at = now;
    c->hs_resend_at = now + c->cfg.handshake_timeout / c->cfg.handshake_tries;
    c->hs_resend_set = 1;
    c->stats.packets_sent++;
    c->stats.bytes_sent += c->hs_out_len;
}

int quantum_connection_create(quantum_connection **out, const quantum_config *config,
                              const quantum_credentials *credentials, const char *server_key,
                              const void *server, size_t server_len,
                              const uint8_t *connection_id, double now) {
    if (!out || !credentials || !server || server_len > sizeof(struct sockaddr_storage) ||
        server_len < sizeof(sa_family_t))
        return QUANTUM_E_INVALID;
    *out = NULL;
    if (sodium_init() < 0)
        return QUANTUM_E_CRYPTO;
    quantum_config cfg;
    if (config)
        cfg = *config;
    else
        quantum_config_default(&cfg);
    if (!config_valid(&cfg))
        return QUANTUM_E_INVALID;
    uint8_t offer[1 + Q_MAX_OFFER];
    if (q_cipher_offer(cfg.cipher_preference, offer) == 0)
        return QUANTUM_E_CRYPTO; /* AES-256-GCM only, on a CPU without it */
    quantum_connection *c = calloc(1, sizeof *c);
    if (!c)
        return QUANTUM_E_NOMEM;
    c->cfg = cfg;
    c->state = QUANTUM_STATE_SYN_SENT;
    memcpy(&c->peer, server, server_len);
    c->peer_len = server_len;
    if (connection_id)
        memcpy(c->cid, connection_id, Q_CID_SIZE);
    else
        randombytes_buf(c->cid, Q_CID_SIZE);
    c->max_datagram = (uint32_t)cfg.max_datagram;
    c->keepalive_interval = cfg.keepalive_interval;
    c->idle_timeout = cfg.idle_timeout;
    c->hs_deadline = now + cfg.handshake_timeout;
    c->last_received = c->last_keepalive_sent = c->now = now;
    c->path_validated = 1;
    c->stats.srtt = c->stats.min_rtt = -1.0;
    compute_sizes(c);
    uint64_t seed;
    randombytes_buf(&seed, sizeof seed);
    q_bbr_init(&c->cc, c->max_datagram, seed);
    int r = q_send_init(&c->sent, (uint32_t)cfg.window);
    if (r == 0)
        r = q_recv_init(&c->recv, (uint32_t)cfg.window, cfg.max_ack_delay);
    if (r == 0) {
        c->hs = malloc(sizeof *c->hs);
        r = c->hs ? q_client_hs_init(c->hs, c->cid, credentials, cfg.fec_k, cfg.fec_m,
                                     server_key, offer, NULL)
                  : QUANTUM_E_NOMEM;
    }
    if (r != 0) {
        quantum_connection_destroy(c);
        return r;
    }
    uint8_t hello[Q_HELLO_SIZE];
    q_client_hello(c->hs, hello);
    send_handshake_packet(c, Q_SYN, hello, sizeof hello, now);
    *out = c;
    return 0;
}

void quantum_connection_destroy(quantum_connection *c) {
    if (!c)
        return;
    if (c->hs) {
        q_client_hs_wipe(c->hs);
        free(c->hs);
    }
    q_keys_wipe(&c->seal);
    q_keys_wipe(&c->open);
    if (c->sender) {
        /* the references held by packets in flight and by the retransmission queue are
         * dropped with the messages themselves */
        q_sender_free(c->sender);
    }
    q_receiver_free(c->receiver);
    free(c->refs);
    q_send_free(&c->sent);
    q_recv_free(&c->recv);
    free(c->encoder);
    q_fec_decoder_free(c->decoder);
    for (size_t i = 0; i < c->ev_len; i++)
        free(c->events[c->ev_head + i].owned);
    free(c->events);
    q_buf_free(&c->ev_data);
    free(c->last_owned);
    sodium_memzero(c->session_token, sizeof c->session_token);
    free(c);
}

static void apply_params(quantum_connection *c, const q_params *p) {
    c->params = *p;
    c->fec_on = (c->cfg.fec_k || c->cfg.fec_m) && p->fec_k; /* both must want it (5.2.6) */
    /* the server's keepalive interval and idle timeout apply (5.2.6); we may be stricter */
    double server_keepalive = p->keepalive_ms / 1000.0, server_idle = p->idle_ms / 1000.0;
    if (c->keepalive_interval > 0)
        c->keepalive_interval = q_min_d(c->keepalive_interval, server_keepalive);
    c->idle_timeout = q_min_d(c->idle_timeout, server_idle);
    compute_sizes(c);
}

static int install_keys(quantum_connection *c, const q_schedule *s) {
    int r = q_keys_init(&c->seal, s->cipher, s->client_secret);
    if (r == 0)
        r = q_keys_init(&c->open, s->cipher, s->server_secret);
    if (r == 0)
        c->have_keys = 1;
    return r;
}

int q_connection_install_keys(quantum_connection *c, const q_schedule *s, const q_params *p,
                              double now) {
    int r = install_keys(c, s);
    if (r != 0)
        return r;
    apply_params(c, p);
    c->state = QUANTUM_STATE_AWAIT_ACCEPT;
    c->hs_out_pending = 0;
    c->hs_resend_set = 0;
    c->hs_tries = 0;
    c->last_received = now;
    return 0;
}

/* ------------------------------------------------------------------------------ drops */

static void drop(quantum_connection *c) { c->stats.dropped++; }

/* -------------------------------------------------------------------------- sending */

static int control_pending(const quantum_connection *c) {
    return c->ka_out_n || c->ka_acks_n || c->floor_pending || c->path_responses_n ||
           c->challenge_pending;
}

static int parity_pending(const quantum_connection *c) { return q_fec_parity_pending(c->encoder); }

static int fin_due(const quantum_connection *c) {
    return c->state == QUANTUM_STATE_CLOSING && !c->fin_sent &&
           (!c->sender || !q_sender_has_pending(c->sender)) && c->sent.bytes_in_flight == 0 &&
           !control_pending(c) && !parity_pending(c);
}

static int has_data(const quantum_connection *c) {
    return control_pending(c) || parity_pending(c) ||
           (c->sender && q_sender_has_pending(c->sender)) || fin_due(c);
}

/* Key update (section 6): a new sending generation once key_update_packets were sealed in
 * this one and the server acknowledged one of them (so it has these keys and can derive the
 * next). */
static void maybe_update_keys(quantum_connection *c) {
    if (c->seal.sealed >= c->cfg.key_update_packets && c->seal_acked) {
        q_keys_update(&c->seal);
        c->seal_acked = 0;
        c->stats.key_updates++;
    }
}

/* The current generation may seal no more packets. */
static int seal_exhausted(const quantum_connection *c) {
    return c->seal.sealed >= c->cfg.packets_per_key;
}

/* Seal and account the packet whose payload (payload_len bytes) sits at buf + 32 + 8 nsack,
 * after the SACK blocks already written there. Returns the pn and the datagram size. */
static uint64_t send_protected(quantum_connection *c, uint8_t *buf, uint8_t flags, uint32_t ack32,
                               int nsack, size_t payload_len, int eliciting, uint16_t nrefs,
                               int has_close, double now, size_t *size_out) {
    maybe_update_keys(c);
    uint64_t pn = q_send_allocate(&c->sent);
    uint8_t *payload = buf + Q_HEADER_SIZE + 8 * (size_t)nsack;
    flags |= q_keys_phase_flag(&c->seal);
    if (flags & Q_PSH) {
        if (!c->encoder)
            c->encoder = q_fec_encoder_new(c->params.fec_k, c->params.fec_m);
        if (c->encoder) /* without memory the packet simply goes unprotected */
            q_fec_encoder_add(c->encoder, pn, payload, payload_len);
        else
            flags &= (uint8_t)~Q_PSH;
    }
    q_header_encode(buf, flags, c->cid, (uint32_t)pn, ack32, (uint16_t)payload_len);
    size_t body = 8 * (size_t)nsack + payload_len;
    q_keys_seal(&c->seal, pn, buf, Q_HEADER_SIZE, buf + Q_HEADER_SIZE, body);
    q_recv_on_ack_sent(&c->recv);
    size_t size = Q_HEADER_SIZE + body + Q_TAG_SIZE;
    if (eliciting) { /* a pure ACK (or only KEEPALIVE_ACKs) is neither tracked nor controlled */
        q_rate rate = q_bbr_on_sent(&c->cc, now, (uint32_t)size, c->sent.bytes_in_flight);
        q_sent *p = q_send_track(&c->sent, pn, now, (uint32_t)size, rate);
        p->nrefs = nrefs;
        p->has_close = (uint8_t)has_close;
    }
    c->stats.packets_sent++;
    c->stats.bytes_sent += size;
    if (!c->path_validated)
        c->path_budget -= (int64_t)size;
    *size_out = size;
    return pn;
}

/* The ack fields, with only as many SACK blocks as fit beside `payload_len` bytes. */
static int write_ack_fields(quantum_connection *c, uint8_t *buf, size_t payload_len,
                            uint32_t *ack32) {
    q_sack sack[Q_MAX_SACK];
    int n = q_recv_ack_fields(&c->recv, ack32, sack);
    long room = ((long)c->max_datagram - Q_HEADER_SIZE - Q_TAG_SIZE - (long)payload_len) / 8;
    if (n > room)
        n = room > 0 ? (int)room : 0; /* the most recent blocks; later packets repeat them */
    for (int i = 0; i < n; i++) {
        q_put32(buf + Q_HEADER_SIZE + 8 * i, sack[i].start);
        q_put32(buf + Q_HEADER_SIZE + 8 * i + 4, sack[i].end);
    }
    return n;
}

static size_t send_ack_only(quantum_connection *c, uint8_t *buf, double now) {
    if (!c->have_keys || seal_exhausted(c))
        return 0;
    uint32_t ack32;
    int nsack = write_ack_fields(c, buf, 0, &ack32);
    size_t size;
    send_protected(c, buf, Q_ACK, ack32, nsack, 0, 0, 0, 0, now, &size);
    return size;
}

/* A control packet built while receiving, kept until next_datagram() collects it. */
static void send_control_now(quantum_connection *c, uint8_t flags, const uint8_t *frames,
                             size_t len, double now) {
    if (!c->have_keys || seal_exhausted(c))
        return;
    if (c->pending_out_n == Q_PENDING_OUT)
        return;
    uint8_t *buf = c->pending_out[c->pending_out_n];
    uint32_t ack32;
    int nsack = write_ack_fields(c, buf, len, &ack32);
    memcpy(buf + Q_HEADER_SIZE + 8 * (size_t)nsack, frames, len);
    size_t size;
    /* a reset is not tracked: the connection is closed the moment it leaves */
    send_protected(c, buf, flags, ack32, nsack, len, 0, 0, 0, now, &size);
    c->pending_out_len[c->pending_out_n++] = size;
}

static void protocol_violation(quantum_connection *c, const char *why, double now) {
    uint8_t frame[5 + Q_MAX_REASON];
    size_t len = strlen(why);
    if (len > Q_MAX_REASON)
        len = Q_MAX_REASON;
    size_t n = q_enc_code_reason(frame, Q_FRAME_CLOSE, QUANTUM_CLOSE_PROTOCOL_VIOLATION,
                                 (const uint8_t *)why, (uint16_t)len);
    send_control_now(c, Q_ACK | Q_RST, frame, n, now);
    terminate(c, QUANTUM_CLOSE_PROTOCOL_VIOLATION, (const uint8_t *)why, len, 0);
}

static void set_close_reason(quantum_connection *c, uint16_t code, const uint8_t *reason,
                             size_t len) {
    if (len > Q_MAX_REASON)
        len = Q_MAX_REASON;
    /* keep whole UTF-8 sequences when cutting */
    while (len > 0 && !q_utf8_valid(reason, len))
        len--;
    c->close_code = code;
    if (len)
        memcpy(c->close_reason, reason, len);
    c->close_reason[len] = 0;
    c->close_reason_len = (uint16_t)len;
}

static void close_with(quantum_connection *c, uint16_t code, const char *reason) {
    if (c->state == QUANTUM_STATE_CLOSING || c->state == QUANTUM_STATE_CLOSED)
        return;
    set_close_reason(c, code, (const uint8_t *)reason, strlen(reason));
    if (!c->have_keys) {
        terminate(c, code, (const uint8_t *)reason, strlen(reason), 0);
        return;
    }
    c->state = QUANTUM_STATE_CLOSING;
}

/* Near a generation's packet limit without a key update (the server acknowledged nothing
 * sealed with it): close gracefully (the headroom drains the queue and carries the FIN); at
 * the limit itself stop without sealing another packet and return 1. */
static int keys_running_out(quantum_connection *c) {
    static const char why[] = "packet protection limit reached";
    if (seal_exhausted(c)) {
        terminate(c, QUANTUM_CLOSE_KEYS_EXHAUSTED, (const uint8_t *)why, sizeof why - 1, 0);
        return 1;
    }
    close_with(c, QUANTUM_CLOSE_KEYS_EXHAUSTED, "packet protection limit reached: reconnect");
    return 0;
}

/* Keepalive ids count up by one, so id mod Q_KEEPALIVES_PENDING is a slot that holds the
 * newest id of its residue: a new one replaces the one sent Q_KEEPALIVES_PENDING earlier. */
static q_keepalive_pending *pending_keepalive(quantum_connection *c, uint32_t id) {
    q_keepalive_pending *p = &c->ka_pending[id % Q_KEEPALIVES_PENDING];
    return p->used && p->id == id ? p : NULL;
}

static void record_keepalive_sent(quantum_connection *c, uint32_t id, double now) {
    q_keepalive_pending *p = pending_keepalive(c, id);
    if (p)
        p->sent_at = now; /* its RTT runs from when it really leaves */
}

static size_t build_data_packet(quantum_connection *c, uint8_t *buf, double now) {
    uint32_t ack32;
    /* a data packet always has room for all eight blocks (data_room leaves it) */
    int nsack = write_ack_fields(c, buf, c->data_room, &ack32);
    uint8_t *payload = buf + Q_HEADER_SIZE + 8 * (size_t)nsack;
    size_t room = c->data_room, len = 0;
    int eliciting = 0;
    while (c->path_responses_n && room >= 9) {
        len += q_enc_path(payload + len, Q_FRAME_PATH_RESPONSE, c->path_responses[0]);
        memmove(c->path_responses[0], c->path_responses[1],
                (size_t)(--c->path_responses_n) * 8);
        room -= 9;
        eliciting = 1;
    }
    if (c->challenge_pending && room >= 9) {
        len += q_enc_path(payload + len, Q_FRAME_PATH_CHALLENGE, c->challenge);
        c->challenge_pending = 0;
        room -= 9;
        eliciting = 1;
    }
    if (c->floor_pending && room >= 5) {
        len += q_enc_u32_frame(payload + len, Q_FRAME_ACK_FLOOR, c->floor_value);
        c->floor_pending = 0;
        room -= 5;
        eliciting = 1;
    }
    int ka = 0;
    for (; ka < c->ka_out_n && room >= 5; ka++) {
        len += q_enc_u32_frame(payload + len, Q_FRAME_KEEPALIVE, c->ka_out[ka]);
        record_keepalive_sent(c, c->ka_out[ka], now);
        room -= 5;
        eliciting = 1;
    }
    memmove(c->ka_out, c->ka_out + ka, (size_t)(c->ka_out_n - ka) * sizeof *c->ka_out);
    c->ka_out_n -= ka;
    int acks = 0;
    for (; acks < c->ka_acks_n && room >= 9; acks++) {
        len += q_enc_keepalive_ack(payload + len, c->ka_acks[acks], QUANTUM_NO_SESSION);
        room -= 9;
    }
    memmove(c->ka_acks, c->ka_acks + acks, (size_t)(c->ka_acks_n - acks) * sizeof *c->ka_acks);
    c->ka_acks_n -= acks;
    uint8_t flags = Q_ACK;
    uint16_t nrefs = 0;
    q_frag_ref *refs = c->refs ? c->refs + (size_t)q_send_slot(&c->sent, c->sent.next_pn) *
                                                 Q_REFS_PER_PACKET
                               : NULL;
    while (c->sender && refs && room >= Q_MESSAGE_OVERHEAD && q_sender_has_pending(c->sender) &&
           nrefs < Q_REFS_PER_PACKET) {
        q_frag_ref ref;
        if (!q_sender_pop(c->sender, room, c->data_room, &ref))
            break;
        const q_out_msg *m = ref.msg;
        size_t n = ref.whole ? q_enc_message(payload + len, m->channel, m->mode, m->id,
                                             q_frag_data(&ref), ref.len)
                             : q_enc_fragment(payload + len, m->channel, m->mode, m->id,
                                              ref.offset, m->size, q_frag_data(&ref), ref.len);
        len += n;
        room -= n;
        eliciting = 1;
        if (m->mode <= QUANTUM_RELIABLE_UNORDERED)
            refs[nrefs++] = ref; /* kept until acknowledged or lost */
        else
            q_sender_release(c->sender, ref.msg);
        if (c->fec_on)
            flags = Q_ACK | Q_PSH; /* this packet joins the open FEC group */
    }
    int has_close = 0;
    if (len == 0 && fin_due(c)) {
        len = q_enc_code_reason(payload, Q_FRAME_CLOSE, c->close_code, c->close_reason,
                                c->close_reason_len);
        flags |= Q_FIN;
        has_close = 1;
        eliciting = 1;
    }
    if (len == 0)
        return 0;
    size_t size;
    uint64_t pn = send_protected(c, buf, flags, ack32, nsack, len, eliciting, nrefs, has_close,
                                 now, &size);
    if (has_close) {
        c->fin_pn = pn;
        c->fin_sent = 1;
        if (!c->close_deadline_set) {
            c->close_deadline = now + c->cfg.close_timeout;
            c->close_deadline_set = 1;
        }
    }
    return size;
}

static size_t build_parity_packet(quantum_connection *c, uint8_t *buf, double now) {
    q_fec_encoder *e = c->encoder;
    int index = e->out_next++;
    size_t len = 8 + 4 * (size_t)e->out_k + 2 + e->out_size;
    uint32_t ack32;
    int nsack = write_ack_fields(c, buf, len, &ack32);
    q_enc_parity(buf + Q_HEADER_SIZE + 8 * (size_t)nsack, e->out_group, (uint8_t)e->out_count,
                 (uint8_t)index, (uint8_t)e->out_k, e->out_seqs, e->shards[index], e->out_size);
    size_t size;
    send_protected(c, buf, Q_ACK | Q_FEC, ack32, nsack, len, 1, 0, 0, now, &size);
    return size;
}

/* One datagram of what the window, congestion control and pacing allow, else 0. */
static size_t fill_one(quantum_connection *c, uint8_t *buf, double now) {
    for (;;) {
        maybe_update_keys(c);
        if (c->seal.sealed >= c->cfg.packets_per_key - Q_KEY_LIMIT_HEADROOM &&
            keys_running_out(c))
            return 0; /* the key's limit: not one more packet */
        if (!has_data(c)) {
            if (c->encoder && c->encoder->pending) {
                /* the sender ran dry: close the FEC group now rather than let a partial
                 * group wait for packets that may not come */
                q_fec_encoder_flush(c->encoder);
                continue;
            }
            q_bbr_on_app_limited(&c->cc, c->sent.bytes_in_flight);
            break;
        }
        uint64_t in_flight = c->sent.bytes_in_flight;
        if (!q_send_can_send(&c->sent) || !q_bbr_can_send(&c->cc, in_flight))
            break;
        /* pacing spreads a flight that fills the pipe; below half the window the path cannot
         * be congested by us, and pacing app-limited real-time traffic would only queue it */
        if (in_flight >= c->cc.cwnd / 2 && q_bbr_next_send_time(&c->cc, now) > now)
            break;
        if (!c->path_validated && c->path_budget <= 0 && !control_pending(c))
            break;
        if (parity_pending(c))
            return build_parity_packet(c, buf, now);
        size_t n = build_data_packet(c, buf, now);
        if (n)
            return n;
        break;
    }
    double due = q_recv_ack_deadline(&c->recv);
    if (due >= 0 && due <= now)
        return send_ack_only(c, buf, now);
    return 0;
}

int quantum_connection_next_datagram(quantum_connection *c, double now, uint8_t *buf,
                                     size_t capacity, size_t *length) {
    if (!c || !buf || !length)
        return QUANTUM_E_INVALID;
    if (capacity < c->max_datagram)
        return QUANTUM_E_BUFFER;
    begin_call(c);
    c->now = now;
    if (c->hs_out_pending) {
        c->hs_out_pending = 0;
        memcpy(buf, c->hs_out, c->hs_out_len);
        *length = c->hs_out_len;
        return 1;
    }
    if (c->pending_out_n) {
        *length = c->pending_out_len[0];
        memcpy(buf, c->pending_out[0], *length);
        c->pending_out_n--;
        memmove(c->pending_out[0], c->pending_out[1], (size_t)c->pending_out_n * Q_MAX_DATAGRAM);
        memmove(c->pending_out_len, c->pending_out_len + 1,
                (size_t)c->pending_out_n * sizeof *c->pending_out_len);
        return 1;
    }
    if (c->have_keys && c->state != QUANTUM_STATE_CLOSED) {
        size_t n = fill_one(c, buf, now);
        if (n) {
            *length = n;
            return 1;
        }
    }
    return 0;
}

/* --------------------------------------------------------------------------- closing */

static void terminate(quantum_connection *c, uint16_t code, const uint8_t *reason, size_t len,
                      int by_peer) {
    if (c->state == QUANTUM_STATE_CLOSED)
        return;
    c->state = QUANTUM_STATE_CLOSED;
    set_close_reason(c, code, reason, len);
    c->hs_resend_set = 0;
    c->close_deadline_set = 0;
    q_ev *e = push_event(c, QUANTUM_EVENT_DISCONNECTED);
    if (!e)
        return;
    e->code = code;
    e->by_peer = (uint8_t)by_peer;
    /* the reason with its NUL, in the arena */
    size_t at = q_buf_append(&c->ev_data, c->close_reason, c->close_reason_len + 1u);
    e->reason_off = at; /* (size_t)-1 without memory: the event then has an empty reason */
    e->reason_len = at == (size_t)-1 ? 0 : c->close_reason_len;
}

int quantum_connection_close(quantum_connection *c, const char *reason) {
    if (!c)
        return QUANTUM_E_INVALID;
    if (!reason)
        reason = "";
    if (!q_utf8_valid((const uint8_t *)reason, strlen(reason)))
        return QUANTUM_E_INVALID;
    if (c->state == QUANTUM_STATE_CLOSING || c->state == QUANTUM_STATE_CLOSED)
        return QUANTUM_E_CLOSED;
    begin_call(c);
    close_with(c, QUANTUM_CLOSE_NORMAL, reason);
    return 0;
}

/* ------------------------------------------------------------------------ application */

int quantum_connection_send(quantum_connection *c, uint8_t channel, quantum_delivery mode,
                            const void *data, size_t length) {
    if (!c || (length && !data) || (unsigned)mode > QUANTUM_UNRELIABLE_SEQUENCED)
        return QUANTUM_E_INVALID;
    if (c->state == QUANTUM_STATE_CLOSING || c->state == QUANTUM_STATE_CLOSED)
        return QUANTUM_E_CLOSED;
    if (c->state != QUANTUM_STATE_ESTABLISHED)
        return QUANTUM_E_STATE;
    if (!c->refs) { /* before the sender: a sender implies somewhere to keep references */
        c->refs = calloc((size_t)c->sent.window * Q_REFS_PER_PACKET, sizeof *c->refs);
        if (!c->refs)
            return QUANTUM_E_NOMEM;
    }
    if (!c->sender) {
        c->sender = q_sender_new();
        if (!c->sender)
            return QUANTUM_E_NOMEM;
    }
    uint32_t id;
    int r = q_sender_queue(c->sender, channel, (uint8_t)mode, data, length, &id);
    if (r == 0)
        c->stats.messages_sent++;
    return r;
}

static uint32_t queue_keepalive(quantum_connection *c, int timer, double now, int heartbeat) {
    uint32_t id = ++c->keepalive_id;
    if (timer)
        c->last_keepalive_sent = now;
    q_keepalive_pending *p = &c->ka_pending[id % Q_KEEPALIVES_PENDING]; /* the oldest goes */
    p->used = 1;
    p->spent = 0;
    p->id = id;
    p->heartbeat = heartbeat;
    p->sent_at = now;
    if (c->ka_out_n == Q_KEEPALIVES_PENDING) { /* unsent for so long: the oldest is moot */
        memmove(c->ka_out, c->ka_out + 1, (Q_KEEPALIVES_PENDING - 1) * sizeof *c->ka_out);
        c->ka_out_n--;
    }
    c->ka_out[c->ka_out_n++] = id;
    return id;
}

int quantum_connection_keepalive(quantum_connection *c, uint32_t *keepalive_id) {
    if (!c)
        return QUANTUM_E_INVALID;
    if (c->state != QUANTUM_STATE_ESTABLISHED)
        return c->state >= QUANTUM_STATE_CLOSING ? QUANTUM_E_CLOSED : QUANTUM_E_STATE;
    uint32_t id = queue_keepalive(c, 0, c->now, -1);
    if (keepalive_id)
        *keepalive_id = id;
    return 0;
}

static double heartbeat_interval(const quantum_connection *c) {
    double srtt = c->sent.rtt.sampled ? c->sent.rtt.srtt : 0.1;
    return q_max_d(2 * srtt, 0.25);
}

int quantum_connection_heartbeat(quantum_connection *c, double timeout, double now,
                                 uint32_t *keepalive_id) {
    if (!c || !(timeout > 0))
        return QUANTUM_E_INVALID;
    if (c->state != QUANTUM_STATE_ESTABLISHED)
        return c->state >= QUANTUM_STATE_CLOSING ? QUANTUM_E_CLOSED : QUANTUM_E_STATE;
    int slot = -1;
    for (int i = 0; i < Q_HEARTBEATS && slot < 0; i++)
        if (!c->heartbeats[i].used)
            slot = i;
    if (slot < 0)
        return QUANTUM_E_STATE; /* Q_HEARTBEATS already running */
    c->now = now;
    q_heartbeat *h = &c->heartbeats[slot];
    h->used = 1;
    h->id = queue_keepalive(c, 0, now, slot);
    h->deadline = now + timeout;
    h->next_resend = now + heartbeat_interval(c);
    if (keepalive_id)
        *keepalive_id = h->id;
    return 0;
}

/* ------------------------------------------------------------------------- receiving */

static void on_acked(void *ctx, const q_sent *p, uint32_t slot) {
    quantum_connection *c = ctx;
    if (c->seal.first_pn != UINT64_MAX && p->pn >= c->seal.first_pn)
        c->seal_acked = 1; /* the server has the current generation's keys */
    for (uint16_t i = 0; i < p->nrefs; i++)
        q_sender_release(c->sender, c->refs[(size_t)slot * Q_REFS_PER_PACKET + i].msg);
    if (p->has_close && c->fin_sent && p->pn == c->fin_pn)
        c->fin_acked = 1;
}

static void on_lost(void *ctx, const q_sent *p, uint32_t slot) {
    quantum_connection *c = ctx;
    if (p->nrefs || p->has_close)
        c->lost_with_frames++;
    for (uint16_t i = 0; i < p->nrefs; i++)
        q_sender_requeue(c->sender, c->refs[(size_t)slot * Q_REFS_PER_PACKET + i]);
    if (p->has_close && c->fin_sent && p->pn == c->fin_pn)
        c->fin_sent = 0; /* a new FIN goes out with the close frame */
}

static void on_ack(quantum_connection *c, uint32_t ack32, const q_sack *sack, int nsack,
                   double now) {
    q_ack_result res;
    c->lost_with_frames = 0;
    q_send_on_ack(&c->sent, ack32, sack, nsack, now, on_acked, on_lost, c, &res);
    if (!res.valid)
        return;
    if (res.nacked)
        q_bbr_on_ack(&c->cc, now, &res.acked, c->sent.bytes_in_flight, res.has_rtt,
                     res.rtt_sample);
    if (c->fin_acked) {
        terminate(c, c->close_code, c->close_reason, c->close_reason_len, 0);
        return;
    }
    if (res.nlost) {
        c->stats.packets_lost += res.nlost;
        c->stats.fast_retransmits += c->lost_with_frames;
        q_bbr_on_loss(&c->cc, now, res.lost_bytes, c->sent.bytes_in_flight);
    }
    if (nsack && q_send_peer_needs_floor(&c->sent, ack32)) {
        c->floor_pending = 1;
        c->floor_value = (uint32_t)q_send_floor(&c->sent);
    }
}

static void on_keepalive_ack(quantum_connection *c, uint32_t id, uint32_t remaining_ms,
                             double now) {
    q_keepalive_pending *p = pending_keepalive(c, id);
    uint32_t report = id;
    double rtt = -1.0;
    if (p) {
        p->used = 0;
        if (p->spent)
            return; /* its heartbeat was answered already */
        rtt = now - p->sent_at;
        if (p->heartbeat >= 0) {
            q_heartbeat *h = &c->heartbeats[p->heartbeat];
            report = h->id;
            h->used = 0;
            for (int i = 0; i < Q_KEEPALIVES_PENDING; i++)
                if (c->ka_pending[i].used && c->ka_pending[i].heartbeat == p->heartbeat)
                    c->ka_pending[i].spent = 1;
        }
    }
    q_ev *e = push_event(c, QUANTUM_EVENT_KEEPALIVE);
    if (!e)
        return;
    e->keepalive_id = report;
    e->remaining_ms = remaining_ms;
    e->rtt = rtt;
}

static void on_parity(quantum_connection *c, const q_frame *f, double now) {
    if (!c->fec_on)
        return;
    if (!c->decoder && !(c->decoder = q_fec_decoder_new()))
        return; /* without memory there is no recovery, but nothing breaks */
    uint64_t pns[Q_FEC_MAX_K];
    for (int i = 0; i < f->u.parity.k; i++)
        pns[i] = q_recv_expand(&c->recv, q_get32(f->u.parity.seqs + 4 * i));
    const char *why = NULL;
    if (q_fec_on_parity(c->decoder, f->u.parity.group, f->u.parity.m, f->u.parity.index, pns,
                        f->u.parity.k, f->u.parity.shard, f->u.parity.length, &why) != 0)
        protocol_violation(c, why, now);
}

static void on_session(quantum_connection *c, const q_frame *f, double now) {
    if (c->state != QUANTUM_STATE_AWAIT_ACCEPT)
        return;
    memcpy(c->session_id, f->u.session.session_id, 16);
    memcpy(c->session_token, f->u.session.token, f->u.session.token_len);
    c->session_token[f->u.session.token_len] = 0;
    c->has_session = 1;
    c->state = QUANTUM_STATE_ESTABLISHED;
    c->last_keepalive_sent = now;
    if (c->hs) { /* the handshake is over: keep nothing of it but the server's key */
        q_client_hs_wipe(c->hs);
        free(c->hs);
        c->hs = NULL;
    }
    q_ev *e = push_event(c, QUANTUM_EVENT_CONNECTED);
    if (!e)
        return;
    memcpy(e->session_id, c->session_id, 16);
    memcpy(e->token, c->session_token, (size_t)f->u.session.token_len + 1);
    e->remaining_ms = f->u.session.remaining_ms;
    e->resumed = f->u.session.resumed;
}

/* The frames of one authenticated packet (already validated by q_frames_check). */
static void process_frames(quantum_connection *c, const uint8_t *payload, size_t len,
                           uint8_t flags, double now) {
    size_t pos = 0;
    q_frame f;
    while (c->state != QUANTUM_STATE_CLOSED && q_frame_next(payload, len, &pos, &f) == 1) {
        switch (f.type) {
        case Q_FRAME_MESSAGE: {
            if (!c->receiver && !(c->receiver = q_receiver_new(c->cfg.max_receive_buffer))) {
                terminate(c, QUANTUM_CLOSE_INTERNAL_ERROR, (const uint8_t *)"out of memory", 13,
                          0);
                return;
            }
            const char *why = NULL;
            int r = q_receiver_on_frame(c->receiver, f.u.msg.channel, f.u.msg.mode, f.u.msg.id,
                                        f.u.msg.fragment, f.u.msg.offset, f.u.msg.total,
                                        f.u.msg.data, f.u.msg.length, deliver, c, &why);
            if (r == -1) {
                protocol_violation(c, why, now);
                return;
            }
            if (r != 0) {
                terminate(c, QUANTUM_CLOSE_INTERNAL_ERROR, (const uint8_t *)"out of memory", 13,
                          0);
                return;
            }
            break;
        }
        case Q_FRAME_KEEPALIVE:
            /* servers send none today; answered (no session on our side) rather than ignored */
            if (c->ka_acks_n < Q_KEEPALIVES_PENDING)
                c->ka_acks[c->ka_acks_n++] = f.u.keepalive.id;
            break;
        case Q_FRAME_KEEPALIVE_ACK:
            on_keepalive_ack(c, f.u.keepalive_ack.id, f.u.keepalive_ack.remaining_ms, now);
            break;
        case Q_FRAME_ACK_FLOOR:
            q_recv_on_floor(&c->recv, f.u.ack_floor.floor);
            break;
        case Q_FRAME_PARITY:
            on_parity(c, &f, now);
            break;
        case Q_FRAME_PATH_CHALLENGE:
            if (c->path_responses_n == Q_PATH_RESPONSES) { /* keep the newest */
                memmove(c->path_responses[0], c->path_responses[1], (Q_PATH_RESPONSES - 1) * 8);
                c->path_responses_n--;
            }
            memcpy(c->path_responses[c->path_responses_n++], f.u.path.data, 8);
            c->stats.path_challenges_answered++;
            break;
        case Q_FRAME_PATH_RESPONSE:
            if (c->has_challenge && sodium_memcmp(f.u.path.data, c->challenge, 8) == 0) {
                c->has_challenge = 0;
                c->path_validated = 1;
            }
            break;
        case Q_FRAME_SESSION:
            on_session(c, &f, now);
            break;
        case Q_FRAME_REJECT:
            if (c->state == QUANTUM_STATE_AWAIT_ACCEPT) {
                terminate(c, f.u.close.code, f.u.close.reason, f.u.close.length, 1);
                return;
            }
            break;
        case Q_FRAME_CLOSE:
            /* FIN: graceful, acknowledged at once so the peer stops retransmitting it; RST:
             * abortive. Either way we are done. */
            if (flags & Q_FIN) {
                if (c->pending_out_n < Q_PENDING_OUT) {
                    size_t n = send_ack_only(c, c->pending_out[c->pending_out_n], now);
                    if (n)
                        c->pending_out_len[c->pending_out_n++] = n;
                }
            }
            terminate(c, f.u.close.code, f.u.close.reason, f.u.close.length, 1);
            return;
        default:
            break;
        }
    }
}

static void process_recovered(quantum_connection *c, double now) {
    while (c->state != QUANTUM_STATE_CLOSED && q_fec_next_recovered(c->decoder, &c->recovered)) {
        q_fec_recovered *r = &c->recovered;
        int eliciting;
        if (q_recv_check(&c->recv, r->pn) != Q_PN_NEW)
            continue;
        if (q_frames_check(r->data, r->len, &eliciting) != 0) {
            drop(c);
            continue;
        }
        q_recv_on_received(&c->recv, r->pn, 1, now);
        c->stats.fec_recovered++;
        process_frames(c, r->data, r->len, 0, now);
    }
}

static void on_new_path(quantum_connection *c, const void *from, size_t from_len, uint64_t pn) {
    if (pn < c->largest_pn)
        return; /* a reordered packet from the old path, not a migration */
    memcpy(&c->previous, &c->peer, c->peer_len);
    c->previous_len = c->peer_len;
    memcpy(&c->peer, from, from_len);
    c->peer_len = from_len;
    c->path_validated = 0;
    randombytes_buf(c->challenge, sizeof c->challenge);
    c->has_challenge = 1;
    c->challenge_pending = 1;
    c->path_budget = 0;
}

static void receive_handshake(quantum_connection *c, const uint8_t *d, size_t n,
                              const void *from, size_t from_len, double now) {
    q_header h;
    q_sack sack[Q_MAX_SACK];
    int nsack;
    const uint8_t *payload;
    if (!c->hs || (from && !q_addr_equal(from, from_len, &c->peer, c->peer_len))) {
        drop(c);
        return;
    }
    if (q_decode_plain(d, n, &h, sack, &nsack, &payload) != 0 ||
        h.version != QUANTUM_WIRE_VERSION) {
        drop(c);
        return;
    }
    c->last_received = now;
    if (c->state != QUANTUM_STATE_SYN_SENT) {
        drop(c); /* a second server hello (or retry, or reject) once one was accepted */
        return;
    }
    if (h.flags & Q_RST) {
        size_t pos = 0;
        q_frame f;
        int r;
        while ((r = q_frame_next(payload, h.payload_len, &pos, &f)) == 1)
            if (f.type == Q_FRAME_REJECT) {
                terminate(c, f.u.close.code, f.u.close.reason, f.u.close.length, 1);
                return;
            }
        drop(c); /* a reset without a reason */
        return;
    }
    if ((h.flags & Q_SYN) && (h.flags & Q_URG)) {
        if (q_client_on_retry(c->hs, payload, h.payload_len) != 0) {
            drop(c); /* unauthenticated: a malformed retry is ignored, not obeyed */
            return;
        }
        uint8_t hello[Q_HELLO_SIZE];
        q_client_hello(c->hs, hello);
        c->hs_tries = 0;
        send_handshake_packet(c, Q_SYN, hello, sizeof hello, now);
        return;
    }
    if ((h.flags & Q_SYN) && (h.flags & Q_ACK)) {
        q_params params;
        const char *why = NULL;
        int code = q_client_on_server_hello(c->hs, payload, h.payload_len, &params, &why);
        if (code == QUANTUM_CLOSE_BAD_SERVER_KEY) {
            /* a server that cannot prove the pinned key: never talk to it */
            terminate(c, (uint16_t)code, (const uint8_t *)why, strlen(why), 0);
            return;
        }
        if (code != 0) {
            drop(c); /* malformed: unauthenticated, so ignored */
            return;
        }
        memcpy(c->server_public, c->hs->server_static, 32);
        c->has_server_public = 1;
        if (install_keys(c, &c->hs->schedule) != 0) {
            terminate(c, QUANTUM_CLOSE_INTERNAL_ERROR, (const uint8_t *)"cipher unavailable", 18,
                      0);
            return;
        }
        sodium_memzero(&c->hs->schedule, sizeof c->hs->schedule);
        if (c->hs_tries == 1) { /* the SYN went out once: an unambiguous RTT sample (Karn) */
            double rtt = now - c->hs_sent_at;
            q_rtt_update(&c->sent.rtt, rtt);
            q_bbr_on_handshake_rtt(&c->cc, rtt);
        }
        apply_params(c, &params);
        c->state = QUANTUM_STATE_AWAIT_ACCEPT;
        c->hs_tries = 0;
        send_handshake_packet(c, Q_ACK, c->hs->finish, c->hs->finish_len, now);
        return;
    }
    drop(c);
}

int quantum_connection_receive(quantum_connection *c, const uint8_t *d, size_t n,
                               const void *from, size_t from_len, double now) {
    if (!c || !d)
        return QUANTUM_E_INVALID;
    if (c->state == QUANTUM_STATE_CLOSED)
        return 0;
    begin_call(c);
    c->now = now;
    q_header h;
    if (n > Q_MAX_DATAGRAM || q_header_decode(d, n, &h) != 0 ||
        h.version != QUANTUM_WIRE_VERSION || memcmp(h.cid, c->cid, Q_CID_SIZE) != 0) {
        drop(c);
        return 0;
    }
    if (!c->have_keys || (h.flags & Q_SYN)) {
        receive_handshake(c, d, n, from, from_len, now);
        return 0;
    }
    uint64_t pn = q_recv_expand(&c->recv, h.seq);
    if (q_recv_check(&c->recv, pn) != Q_PN_NEW) {
        drop(c); /* replayed, too old or beyond the window: dropped before decryption */
        return 0;
    }
    size_t sealed = n - Q_HEADER_SIZE;
    memcpy(c->rx, d + Q_HEADER_SIZE, sealed);
    /* the previous generation is kept 3 x RTO after a switch for reordered packets */
    long body = q_keys_open(&c->open, (h.flags & Q_KEY_PHASE) ? 1 : 0, pn, now,
                            3 * q_rtt_base_rto(&c->sent.rtt), d, Q_HEADER_SIZE, c->rx, sealed);
    if (body < 0) {
        drop(c);
        return 0;
    }
    q_sack sack[Q_MAX_SACK];
    int nsack, eliciting;
    const uint8_t *payload;
    if (q_split_body(c->rx, (size_t)body, h.payload_len, sack, &nsack, &payload) != 0 ||
        q_frames_check(payload, h.payload_len, &eliciting) != 0) {
        /* authenticated, so it really came from the server: a protocol violation */
        protocol_violation(c, "malformed frames", now);
        return 0;
    }
    q_recv_on_received(&c->recv, pn, eliciting, now);
    c->stats.packets_received++;
    c->stats.bytes_received += n;
    c->last_received = now;
    if (from && !q_addr_equal(from, from_len, &c->peer, c->peer_len) &&
        from_len <= sizeof c->peer)
        on_new_path(c, from, from_len, pn);
    if (pn > c->largest_pn)
        c->largest_pn = pn;
    if (c->has_challenge)
        c->path_budget += (int64_t)n * Q_MIGRATION_AMPLIFICATION;
    if (c->state == QUANTUM_STATE_AWAIT_ACCEPT)
        c->hs_resend_set = 0; /* any protected packet proves our finish arrived */
    if (h.flags & Q_ACK) {
        on_ack(c, h.ack, sack, nsack, now);
        if (c->state == QUANTUM_STATE_CLOSED)
            return 0;
    }
    if ((h.flags & Q_PSH) && c->fec_on) {
        const char *why = NULL;
        if (!c->decoder)
            c->decoder = q_fec_decoder_new();
        if (c->decoder && q_fec_on_data(c->decoder, pn, payload, h.payload_len, &why) != 0) {
            protocol_violation(c, why, now);
            return 0;
        }
        process_recovered(c, now);
    }
    process_frames(c, payload, h.payload_len, h.flags, now);
    if (c->decoder)
        process_recovered(c, now);
    return 0;
}

/* ----------------------------------------------------------------------------- timers */

double quantum_connection_next_timer(const quantum_connection *c) {
    if (!c || c->state == QUANTUM_STATE_CLOSED)
        return -1.0;
    double at = c->last_received + c->idle_timeout;
    if (c->state != QUANTUM_STATE_ESTABLISHED) {
        if (c->state == QUANTUM_STATE_SYN_SENT || c->state == QUANTUM_STATE_AWAIT_ACCEPT) {
            at = q_min_d(at, c->hs_deadline);
            if (c->hs_resend_set)
                at = q_min_d(at, c->hs_resend_at);
        }
        if (c->close_deadline_set)
            at = q_min_d(at, c->close_deadline);
    } else if (c->keepalive_interval > 0) {
        at = q_min_d(at, c->last_keepalive_sent + c->keepalive_interval);
    }
    for (int i = 0; i < Q_HEARTBEATS; i++)
        if (c->heartbeats[i].used)
            at = q_min_d(at, q_min_d(c->heartbeats[i].deadline, c->heartbeats[i].next_resend));
    double t = q_recv_ack_deadline(&c->recv);
    if (t >= 0 && t < at)
        at = t;
    t = q_send_loss_deadline(&c->sent);
    if (t >= 0 && t < at)
        at = t;
    uint64_t in_flight = c->sent.bytes_in_flight;
    if (c->have_keys && in_flight >= c->cc.cwnd / 2 && has_data(c) &&
        q_send_can_send(&c->sent) && q_bbr_can_send(&c->cc, in_flight)) {
        t = q_bbr_next_send_time(&c->cc, c->now);
        if (t < at)
            at = t;
    }
    return at;
}

static void resend_handshake(quantum_connection *c, double now) {
    if (c->hs_tries >= c->cfg.handshake_tries) {
        c->hs_resend_set = 0;
        return;
    }
    c->hs_tries++;
    c->hs_out_pending = 1; /* the same bytes again */
    c->hs_resend_at = now + c->cfg.handshake_timeout / c->cfg.handshake_tries;
}

static void heartbeat_timers(quantum_connection *c, double now) {
    for (int i = 0; i < Q_HEARTBEATS; i++) {
        q_heartbeat *h = &c->heartbeats[i];
        if (!h->used)
            continue;
        if (now >= h->deadline) {
            h->used = 0;
            for (int j = 0; j < Q_KEEPALIVES_PENDING; j++)
                if (c->ka_pending[j].used && c->ka_pending[j].heartbeat == i)
                    c->ka_pending[j].spent = 1;
            q_ev *e = push_event(c, QUANTUM_EVENT_KEEPALIVE_TIMEOUT);
            if (e)
                e->keepalive_id = h->id;
        } else if (now >= h->next_resend && c->state == QUANTUM_STATE_ESTABLISHED) {
            /* keepalives are not retransmitted (a late one is worthless): a fresh one */
            queue_keepalive(c, 0, now, i);
            h->next_resend = now + heartbeat_interval(c);
        }
    }
}

void quantum_connection_handle_timer(quantum_connection *c, double now) {
    if (!c || c->state == QUANTUM_STATE_CLOSED)
        return;
    begin_call(c);
    c->now = now;
    if (now >= c->last_received + c->idle_timeout) {
        terminate(c, QUANTUM_CLOSE_IDLE_TIMEOUT, (const uint8_t *)"idle timeout", 12, 0);
        return;
    }
    if (c->state == QUANTUM_STATE_SYN_SENT || c->state == QUANTUM_STATE_AWAIT_ACCEPT) {
        if (now >= c->hs_deadline) {
            terminate(c, QUANTUM_CLOSE_HANDSHAKE_TIMEOUT, (const uint8_t *)"handshake timeout",
                      17, 0);
            return;
        }
        if (c->hs_resend_set && now >= c->hs_resend_at)
            resend_handshake(c, now);
    }
    if (c->close_deadline_set && now >= c->close_deadline) {
        terminate(c, c->close_code, c->close_reason, c->close_reason_len, 0);
        return;
    }
    if (c->have_keys)
        q_keys_expire(&c->open, now);
    double loss_at = q_send_loss_deadline(&c->sent);
    if (loss_at >= 0 && now >= loss_at) {
        uint64_t lost_bytes;
        c->lost_with_frames = 0;
        uint32_t n = q_send_on_loss_timer(&c->sent, now, on_lost, c, &lost_bytes);
        c->stats.packets_lost += n;
        c->stats.timeout_retransmits += c->lost_with_frames;
        q_bbr_on_loss(&c->cc, now, lost_bytes, c->sent.bytes_in_flight);
    }
    if (c->state == QUANTUM_STATE_ESTABLISHED && c->keepalive_interval > 0 &&
        now >= c->last_keepalive_sent + c->keepalive_interval)
        queue_keepalive(c, 1, now, -1);
    heartbeat_timers(c, now);
}

/* ---------------------------------------------------------------------------- queries */

quantum_state quantum_connection_state(const quantum_connection *c) {
    return c ? c->state : QUANTUM_STATE_CLOSED;
}

size_t quantum_connection_max_unreliable(const quantum_connection *c) {
    return c ? QUANTUM_MAX_UNRELIABLE : 0;
}

const void *quantum_connection_peer(const quantum_connection *c, size_t *length) {
    if (!c)
        return NULL;
    if (length)
        *length = c->peer_len;
    return &c->peer;
}

const uint8_t *quantum_connection_id(const quantum_connection *c) { return c ? c->cid : NULL; }

const uint8_t *quantum_connection_server_public_key(const quantum_connection *c) {
    return c && c->has_server_public ? c->server_public : NULL;
}

int quantum_connection_stats(const quantum_connection *c, quantum_stats *s) {
    if (!c || !s)
        return QUANTUM_E_INVALID;
    *s = c->stats;
    s->srtt = c->sent.rtt.sampled ? c->sent.rtt.srtt : -1.0;
    s->min_rtt = c->sent.rtt.sampled ? c->sent.rtt.min : -1.0;
    s->cwnd = c->cc.cwnd;
    s->pacing_rate = c->cc.pacing_rate;
    s->max_datagram = c->max_datagram;
    s->cipher = c->have_keys ? (uint32_t)c->seal.cipher : 0;
    s->send_generation = c->seal.generation;
    s->receive_generation = c->open.generation;
    return 0;
}
