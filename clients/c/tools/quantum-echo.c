/* quantum-echo: proves a round trip of everything against an echo server
 * (examples/echo_server.py), and exits 0 only if everything came back intact.
 *
 *   quantum-echo HOST PORT --server-key KEY --user USER [--ticket TICKET]
 *                [--channels 0,1,7,255] [--big BYTES] [--no-migrate] [--no-resume]
 *                [-4 | -6] [--timeout SECONDS] [--reconnect [--idle-timeout SECONDS]]
 *                [--cipher auto|chacha|chacha-only|aes] [--key-update-packets N]
 *
 * Steps, each printed as "<step> ok ..." on stdout: connect; echo on every delivery mode on
 * every channel listed (reliable messages of several sizes, multi-fragment included;
 * unreliable ones re-sent if the network lost them, which it may); one big message (1 MiB by
 * default); a heartbeat; a migration to a new local port (the server validates the new path);
 * a resume (the connection is dropped without a word and the session is resumed on a new
 * one); a graceful close. With --reconnect, before closing it prints "outage now" and waits
 * for the network to fail and come back (the client notices within --idle-timeout, default
 * 1.5 s, and reconnects by itself, resuming the session). Errors go to stderr; bad arguments
 * exit 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quantum.h"

#define MAX_CHANNELS 16

typedef struct opts {
    const char *host, *server_key, *user, *ticket;
    uint16_t port;
    int channels[MAX_CHANNELS], nchannels;
    size_t big;
    int migrate, resume, family, reconnect;
    int timeout_ms, cipher;
    unsigned long key_update_packets;
    double idle_timeout;
} opts;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int usage(const char *why) {
    fprintf(stderr, "quantum-echo: %s\n", why);
    fprintf(stderr, "usage: quantum-echo HOST PORT --server-key KEY --user USER [--ticket T] "
                    "[--channels 0,1,7,255] [--big BYTES] [--no-migrate] [--no-resume] "
                    "[-4|-6] [--timeout SECONDS] [--reconnect [--idle-timeout SECONDS]] "
                    "[--cipher auto|chacha|chacha-only|aes] [--key-update-packets N]\n");
    return 2;
}

static int fail(const char *step, const char *what) {
    fprintf(stderr, "quantum-echo: %s failed: %s\n", step, what);
    return 1;
}

static int parse_channels(const char *text, opts *o) {
    o->nchannels = 0;
    const char *p = text;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 255 || o->nchannels == MAX_CHANNELS)
            return -1;
        o->channels[o->nchannels++] = (int)v;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        p = end;
    }
    return o->nchannels ? 0 : -1;
}

static int parse(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->big = QUANTUM_MAX_MESSAGE_SIZE;
    o->migrate = o->resume = 1;
    o->timeout_ms = 20000;
    o->idle_timeout = 1.5;
    int ch[] = {0, 1, 7, 255};
    memcpy(o->channels, ch, sizeof ch);
    o->nchannels = 4;
    int positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--server-key") == 0 && next) {
            o->server_key = argv[++i];
        } else if (strcmp(a, "--user") == 0 && next) {
            o->user = argv[++i];
        } else if (strcmp(a, "--ticket") == 0 && next) {
            o->ticket = argv[++i];
        } else if (strcmp(a, "--channels") == 0 && next) {
            if (parse_channels(argv[++i], o) != 0)
                return usage("--channels: a comma-separated list of channels 0..255");
        } else if (strcmp(a, "--big") == 0 && next) {
            char *end;
            unsigned long v = strtoul(argv[++i], &end, 10);
            if (*end || v > QUANTUM_MAX_MESSAGE_SIZE)
                return usage("--big: a byte count up to 1048576");
            o->big = v;
        } else if (strcmp(a, "--timeout") == 0 && next) {
            char *end;
            double v = strtod(argv[++i], &end);
            if (*end || !(v > 0) || v > 3600)
                return usage("--timeout: seconds, positive");
            o->timeout_ms = (int)(v * 1000);
        } else if (strcmp(a, "--idle-timeout") == 0 && next) {
            char *end;
            double v = strtod(argv[++i], &end);
            if (*end || !(v > 0) || v > 3600)
                return usage("--idle-timeout: seconds, positive");
            o->idle_timeout = v;
        } else if (strcmp(a, "--cipher") == 0 && next) {
            const char *v = argv[++i];
            if (strcmp(v, "auto") == 0)
                o->cipher = QUANTUM_CIPHERS_AUTO;
            else if (strcmp(v, "chacha") == 0)
                o->cipher = QUANTUM_CIPHERS_CHACHA_FIRST;
            else if (strcmp(v, "chacha-only") == 0)
                o->cipher = QUANTUM_CIPHERS_CHACHA_ONLY;
            else if (strcmp(v, "aes") == 0)
                o->cipher = QUANTUM_CIPHERS_AES_ONLY;
            else
                return usage("--cipher: auto, chacha, chacha-only or aes");
        } else if (strcmp(a, "--key-update-packets") == 0 && next) {
            char *end;
            unsigned long v = strtoul(argv[++i], &end, 10);
            if (*end || v < 16 || v > 4000000)
                return usage("--key-update-packets: packets, 16..4000000");
            o->key_update_packets = v;
        } else if (strcmp(a, "--reconnect") == 0) {
            o->reconnect = 1;
        } else if (strcmp(a, "--no-migrate") == 0) {
            o->migrate = 0;
        } else if (strcmp(a, "--no-resume") == 0) {
            o->resume = 0;
        } else if (strcmp(a, "-4") == 0) {
            o->family = 4;
        } else if (strcmp(a, "-6") == 0) {
            o->family = 6;
        } else if (a[0] == '-' && a[1]) {
            char msg[128];
            snprintf(msg, sizeof msg, "unknown or incomplete option %s", a);
            return usage(msg);
        } else if (positional == 0) {
            o->host = a;
            positional++;
        } else if (positional == 1) {
            char *end;
            long v = strtol(a, &end, 10);
            if (*end || v < 1 || v > 65535)
                return usage("PORT must be 1..65535");
            o->port = (uint16_t)v;
            positional++;
        } else {
            return usage("too many arguments");
        }
    }
    if (positional != 2)
        return usage("HOST and PORT are required");
    if (!o->server_key)
        return usage("--server-key is required");
    if (!o->user)
        return usage("--user is required");
    return 0;
}

/* Wait for one event of `type` (messages are handed to *want when type is MESSAGE). */
static int wait_event(quantum_client *c, int type, quantum_event *ev, double seconds) {
    double end = now_s() + seconds;
    while (now_s() < end) {
        int r = quantum_client_service(c, 50, ev);
        if (r < 0)
            return r;
        if (r == 1 && ev->type == type)
            return 1;
        if (r == 1 && ev->type == QUANTUM_EVENT_DISCONNECTED)
            return QUANTUM_E_DISCONNECTED;
    }
    return 0;
}

static int connect_client(const opts *o, quantum_client **out, const uint8_t *resume_id,
                          const char *resume_token, quantum_event *ev) {
    quantum_config cfg;
    quantum_config_default(&cfg);
    cfg.handshake_timeout = 8.0;
    cfg.handshake_tries = 16;
    cfg.cipher_preference = o->cipher;
    if (o->key_update_packets)
        cfg.key_update_packets = o->key_update_packets;
    if (o->reconnect) { /* notice a dead network quickly, and keep it busy enough to notice */
        cfg.idle_timeout = o->idle_timeout;
        cfg.keepalive_interval = o->idle_timeout / 3;
        cfg.reconnect_initial_delay = 0.2;
        cfg.reconnect_max_delay = 1.0;
        cfg.reconnect_max_attempts = 0;
    }
    int r = quantum_client_create(out, &cfg);
    if (r == 0)
        r = quantum_client_set_family(*out, o->family);
    if (r == 0 && resume_id)
        r = quantum_client_set_resume(*out, resume_id, resume_token, 0);
    if (r == 0)
        r = quantum_client_connect(*out, o->host, o->port, o->server_key, o->user, o->ticket);
    if (r == 0)
        r = quantum_client_wait_connected(*out, o->timeout_ms, ev);
    return r;
}

static void fill(uint8_t *buf, size_t n, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (uint8_t)x;
    }
}

/* One message out, the same bytes back on the same channel and mode. For the unreliable
 * modes a message the network lost is sent again (a fresh copy), a few times at most. */
static int echo_one(quantum_client *c, uint8_t channel, quantum_delivery mode,
                    const uint8_t *data, size_t len, double timeout) {
    int tries = mode >= QUANTUM_UNRELIABLE ? 5 : 1;
    for (int t = 0; t < tries; t++) {
        int r = quantum_client_send(c, channel, mode, data, len);
        if (r != 0)
            return r;
        double end = now_s() + (mode >= QUANTUM_UNRELIABLE ? 1.0 : timeout);
        quantum_event ev;
        while (now_s() < end) {
            r = quantum_client_service(c, 50, &ev);
            if (r < 0)
                return r;
            if (r == 0 || ev.type == QUANTUM_EVENT_KEEPALIVE)
                continue;
            if (ev.type != QUANTUM_EVENT_MESSAGE)
                return QUANTUM_E_DISCONNECTED;
            if (ev.channel != channel || ev.mode != mode || ev.length != len ||
                (len && memcmp(ev.data, data, len) != 0)) {
                fprintf(stderr, "quantum-echo: mismatch: sent %zu bytes on %u/%d, got %zu on "
                                "%u/%u\n", len, channel, mode, ev.length, ev.channel, ev.mode);
                return QUANTUM_E_INVALID;
            }
            return 0;
        }
    }
    return QUANTUM_E_TIMEOUT;
}

static int step_echo(quantum_client *c, const opts *o) {
    static const size_t reliable_sizes[] = {0, 1, 100, 1079, 1080, 1300, 5000};
    static const size_t unreliable_sizes[] = {0, 1, 200, 1000};
    uint8_t buf[8192];
    int count = 0;
    for (int i = 0; i < o->nchannels; i++) {
        uint8_t ch = (uint8_t)o->channels[i];
        for (int mode = 0; mode <= QUANTUM_UNRELIABLE_SEQUENCED; mode++) {
            const size_t *sizes = mode >= QUANTUM_UNRELIABLE ? unreliable_sizes : reliable_sizes;
            size_t n = mode >= QUANTUM_UNRELIABLE ? 4 : 6;
            for (size_t s = 0; s < n; s++) {
                fill(buf, sizes[s], (uint32_t)(ch * 31 + mode * 7 + s));
                int r = echo_one(c, ch, (quantum_delivery)mode, buf, sizes[s], 10.0);
                if (r != 0) {
                    char what[160];
                    snprintf(what, sizeof what, "channel %u mode %d size %zu: %s", ch, mode,
                             sizes[s], quantum_error_string(r));
                    return fail("echo", what);
                }
                count++;
            }
        }
    }
    /* a burst of ordered messages must come back in order */
    for (uint32_t i = 0; i < 50; i++) {
        uint8_t m[4] = {(uint8_t)(i >> 24), (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i};
        if (quantum_client_send(c, 2, QUANTUM_RELIABLE_ORDERED, m, 4) != 0)
            return fail("echo", "burst send");
    }
    quantum_event ev;
    for (uint32_t i = 0; i < 50;) {
        int r = wait_event(c, QUANTUM_EVENT_MESSAGE, &ev, 10.0);
        if (r != 1)
            return fail("echo", "burst: an ordered message did not come back");
        uint32_t got = (uint32_t)ev.data[0] << 24 | (uint32_t)ev.data[1] << 16 |
                       (uint32_t)ev.data[2] << 8 | ev.data[3];
        if (ev.length != 4 || ev.channel != 2 || got != i)
            return fail("echo", "burst: ordered messages out of order");
        i++;
    }
    printf("echo ok: %d messages on %d channels x 4 modes, 50 in order\n", count, o->nchannels);
    return 0;
}

static int step_big(quantum_client *c, const opts *o) {
    uint8_t *big = malloc(o->big ? o->big : 1);
    if (!big)
        return fail("big", "out of memory");
    fill(big, o->big, 99);
    double t0 = now_s();
    int r = echo_one(c, 3, QUANTUM_RELIABLE_ORDERED, big, o->big, 30.0);
    free(big);
    if (r != 0)
        return fail("big", quantum_error_string(r));
    printf("big ok: %zu bytes in %.3f s\n", o->big, now_s() - t0);
    return 0;
}

static int step_heartbeat(quantum_client *c) {
    uint32_t id;
    int r = quantum_client_heartbeat(c, 5000, &id);
    if (r != 0)
        return fail("heartbeat", quantum_error_string(r));
    quantum_event ev;
    double end = now_s() + 6.0;
    while (now_s() < end) {
        r = quantum_client_service(c, 50, &ev);
        if (r < 0)
            return fail("heartbeat", quantum_error_string(r));
        if (r == 1 && ev.type == QUANTUM_EVENT_KEEPALIVE && ev.keepalive_id == id) {
            if (ev.remaining_ms == QUANTUM_NO_SESSION || ev.remaining_ms == 0)
                return fail("heartbeat", "the server reports no live session");
            printf("heartbeat ok: remaining_ms=%u rtt_ms=%.3f\n", ev.remaining_ms,
                   ev.rtt * 1000);
            return 0;
        }
        if (r == 1 && ev.type == QUANTUM_EVENT_KEEPALIVE_TIMEOUT)
            return fail("heartbeat", "no answer");
    }
    return fail("heartbeat", "no answer");
}

static int step_migrate(quantum_client *c) {
    uint16_t before = quantum_client_local_port(c);
    quantum_stats s0, s1;
    quantum_client_stats(c, &s0);
    int r = quantum_client_rebind(c);
    if (r != 0)
        return fail("migrate", quantum_error_string(r));
    uint16_t after = quantum_client_local_port(c);
    if (after == before)
        return fail("migrate", "the new socket has the old port");
    static const uint8_t msg[] = "after rebinding";
    r = echo_one(c, 0, QUANTUM_RELIABLE_ORDERED, msg, sizeof msg, 10.0);
    if (r != 0)
        return fail("migrate", quantum_error_string(r));
    /* the server challenges the new path; our answer validates it */
    double end = now_s() + 5.0;
    quantum_event ev;
    do {
        quantum_client_stats(c, &s1);
        if (s1.path_challenges_answered > s0.path_challenges_answered)
            break;
        quantum_client_service(c, 50, &ev);
    } while (now_s() < end);
    if (s1.path_challenges_answered <= s0.path_challenges_answered)
        return fail("migrate", "the server never challenged the new path");
    r = echo_one(c, 5, QUANTUM_RELIABLE_UNORDERED, msg, sizeof msg, 10.0);
    if (r != 0)
        return fail("migrate", quantum_error_string(r));
    printf("migrate ok: port %u -> %u, path challenge answered\n", before, after);
    return 0;
}

static void uuid_text(const uint8_t id[16], char out[37]) {
    static const char hex[] = "0123456789abcdef";
    int j = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[j++] = '-';
        out[j++] = hex[id[i] >> 4];
        out[j++] = hex[id[i] & 15];
    }
    out[j] = 0;
}

static int step_resume(quantum_client **c, const opts *o) {
    uint8_t sid[16];
    char token[QUANTUM_MAX_TOKEN + 1];
    int r = quantum_client_session(*c, sid, token, sizeof token);
    if (r != 0)
        return fail("resume", quantum_error_string(r));
    quantum_client_abort(*c); /* gone without a word, as a crash or a dead network would be */
    quantum_client_destroy(*c);
    *c = NULL;
    quantum_event ev;
    r = connect_client(o, c, sid, token, &ev);
    if (r != 0)
        return fail("resume", r == QUANTUM_E_DISCONNECTED ? ev.reason : quantum_error_string(r));
    if (!ev.resumed || memcmp(ev.session_id, sid, 16) != 0)
        return fail("resume", "the server gave a new session instead of resuming");
    static const uint8_t msg[] = "after resuming";
    r = echo_one(*c, 9, QUANTUM_RELIABLE_ORDERED, msg, sizeof msg, 10.0);
    if (r != 0)
        return fail("resume", quantum_error_string(r));
    char text[37];
    uuid_text(sid, text);
    printf("resume ok: session %s resumed on a new connection\n", text);
    return 0;
}

static int step_reconnect(quantum_client *c) {
    uint8_t sid[16];
    if (quantum_client_session(c, sid, NULL, 0) != 0)
        return fail("reconnect", "no session");
    printf("outage now\n");
    fflush(stdout);
    quantum_event ev;
    double end = now_s() + 60.0;
    int r;
    do {
        r = quantum_client_service(c, 100, &ev);
        if (r < 0)
            return fail("reconnect", quantum_error_string(r));
        if (r == 1 && ev.type == QUANTUM_EVENT_DISCONNECTED)
            return fail("reconnect", ev.reason);
    } while (!(r == 1 && ev.type == QUANTUM_EVENT_RECONNECTED) && now_s() < end);
    if (!(r == 1 && ev.type == QUANTUM_EVENT_RECONNECTED))
        return fail("reconnect", "never reconnected");
    if (!ev.resumed || memcmp(ev.session_id, sid, 16) != 0)
        return fail("reconnect", "a new session instead of the old one");
    static const uint8_t msg[] = "after reconnecting";
    r = echo_one(c, 11, QUANTUM_RELIABLE_ORDERED, msg, sizeof msg, 10.0);
    if (r != 0)
        return fail("reconnect", quantum_error_string(r));
    quantum_stats s;
    quantum_client_stats(c, &s);
    printf("reconnect ok: session resumed after the outage (%u reconnect)\n", s.reconnects);
    return 0;
}

static int step_close(quantum_client *c) {
    quantum_stats s;
    quantum_client_stats(c, &s);
    printf("keys: send generation %llu, receive generation %llu, %llu key updates\n",
           (unsigned long long)s.send_generation, (unsigned long long)s.receive_generation,
           (unsigned long long)s.key_updates);
    int r = quantum_client_close(c, "client closed");
    if (r != 0)
        return fail("close", quantum_error_string(r));
    quantum_event ev;
    r = wait_event(c, QUANTUM_EVENT_DISCONNECTED, &ev, 10.0);
    if (r != 1 && r != QUANTUM_E_DISCONNECTED)
        return fail("close", "no DISCONNECTED event");
    if (ev.code != QUANTUM_CLOSE_NORMAL || ev.by_peer)
        return fail("close", ev.reason);
    printf("close ok\n");
    return 0;
}

int main(int argc, char **argv) {
    opts o;
    int r = parse(argc, argv, &o);
    if (r != 0)
        return r;
    setvbuf(stdout, NULL, _IOLBF, 0);
    quantum_client *c = NULL;
    quantum_event ev;
    r = connect_client(&o, &c, NULL, NULL, &ev);
    if (r != 0) {
        char what[700];
        if (r == QUANTUM_E_DISCONNECTED)
            snprintf(what, sizeof what, "%s: %s", quantum_close_code_name(ev.code), ev.reason);
        else
            snprintf(what, sizeof what, "%s", quantum_error_string(r));
        quantum_client_destroy(c);
        return fail("connect", what);
    }
    char text[37];
    uuid_text(ev.session_id, text);
    quantum_stats st;
    quantum_client_stats(c, &st);
    printf("connect ok: session %s remaining_ms=%u cipher=%s\n", text, ev.remaining_ms,
           st.cipher == QUANTUM_CIPHER_AES256GCM ? "aes-256-gcm" : "chacha20-poly1305");
    int failed = step_echo(c, &o) || step_big(c, &o) || step_heartbeat(c) ||
                 (o.migrate && step_migrate(c)) || (o.resume && step_resume(&c, &o)) ||
                 (o.reconnect && step_reconnect(c)) || step_close(c);
    quantum_client_destroy(c);
    return failed ? 1 : 0;
}
