/* The socket layer: one UDP socket, poll(), CLOCK_MONOTONIC, around the sans-I/O connection;
 * plus what only a long-lived client needs: automatic reconnection with backoff, resuming
 * the session, and pinning the server key seen first on every reconnect. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"

#define MAX_METADATA 64
#define RECV_BATCH 64
#define SOCKET_BUFFER (4 * 1024 * 1024)

typedef enum phase {
    P_IDLE,             /* created, not connected */
    P_CONNECTING,       /* first handshake */
    P_CONNECTED,
    P_WAIT_RECONNECT,   /* lost: waiting out the backoff delay */
    P_RECONNECTING,     /* a reconnect handshake is running */
    P_DONE              /* over for good (DISCONNECTED reported, or aborted) */
} phase;

struct quantum_client {
    quantum_config cfg;
    int ip_version;
    char *user_id, *ticket, *server_key, *host;
    uint16_t port;
    char *meta_keys[MAX_METADATA], *meta_values[MAX_METADATA];
    size_t nmeta;
    uint8_t resume_id[16];
    char resume_token[256];
    int has_resume, resume_fallback;

    struct sockaddr_storage server;
    socklen_t server_len;
    int fd;
    quantum_connection *conn;
    phase phase;
    int close_requested;

    uint8_t session_id[16];
    char session_token[QUANTUM_MAX_TOKEN + 1];
    int has_session;
    uint8_t server_public[32];
    int has_server_public;

    int attempt;
    double reconnect_at;
    uint32_t reconnects;
    /* the final DISCONNECTED event, when the client (not a connection) produced it */
    int synth_pending;
    uint16_t synth_code;
    char reason[Q_MAX_REASON + 1];

    double last_timer; /* the connection timer handled last: never handled twice in a row */
    uint8_t buf[Q_MAX_DATAGRAM + 64];
};

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *dup_text(const char *s) {
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

int quantum_client_create(quantum_client **out, const quantum_config *config) {
    if (!out)
        return QUANTUM_E_INVALID;
    *out = NULL;
    if (sodium_init() < 0)
        return QUANTUM_E_CRYPTO;
    quantum_client *c = calloc(1, sizeof *c);
    if (!c)
        return QUANTUM_E_NOMEM;
    if (config)
        c->cfg = *config;
    else
        quantum_config_default(&c->cfg);
    c->fd = -1;
    c->phase = P_IDLE;
    *out = c;
    return 0;
}

static void close_socket(quantum_client *c) {
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

void quantum_client_destroy(quantum_client *c) {
    if (!c)
        return;
    quantum_connection_destroy(c->conn);
    close_socket(c);
    for (size_t i = 0; i < c->nmeta; i++) {
        free(c->meta_keys[i]);
        free(c->meta_values[i]);
    }
    if (c->ticket)
        sodium_memzero(c->ticket, strlen(c->ticket));
    free(c->user_id);
    free(c->ticket);
    free(c->server_key);
    free(c->host);
    sodium_memzero(c, sizeof *c);
    free(c);
}

int quantum_client_set_metadata(quantum_client *c, const char *key, const char *value) {
    if (!c || !key || !value)
        return QUANTUM_E_INVALID;
    if (c->phase != P_IDLE && c->phase != P_DONE)
        return QUANTUM_E_STATE;
    size_t klen = strlen(key), vlen = strlen(value);
    if (klen < 1 || klen > 64 || vlen > 1024 || !q_utf8_valid((const uint8_t *)key, klen) ||
        !q_utf8_valid((const uint8_t *)value, vlen))
        return QUANTUM_E_CREDENTIALS;
    for (size_t i = 0; i < c->nmeta; i++)
        if (strcmp(c->meta_keys[i], key) == 0) { /* replace */
            char *v = dup_text(value);
            if (!v)
                return QUANTUM_E_NOMEM;
            free(c->meta_values[i]);
            c->meta_values[i] = v;
            return 0;
        }
    if (c->nmeta == MAX_METADATA)
        return QUANTUM_E_CREDENTIALS;
    char *k = dup_text(key), *v = dup_text(value);
    if (!k || !v) {
        free(k);
        free(v);
        return QUANTUM_E_NOMEM;
    }
    c->meta_keys[c->nmeta] = k;
    c->meta_values[c->nmeta++] = v;
    return 0;
}

int quantum_client_set_resume(quantum_client *c, const uint8_t session_id[16], const char *token,
                              int fallback) {
    if (!c || !session_id || !token)
        return QUANTUM_E_INVALID;
    if (c->phase != P_IDLE && c->phase != P_DONE)
        return QUANTUM_E_STATE;
    size_t n = strlen(token);
    if (n >= sizeof c->resume_token || !q_utf8_valid((const uint8_t *)token, n))
        return QUANTUM_E_CREDENTIALS;
    memcpy(c->resume_id, session_id, 16);
    memcpy(c->resume_token, token, n + 1);
    c->has_resume = 1;
    c->resume_fallback = fallback != 0;
    return 0;
}

int quantum_client_set_family(quantum_client *c, int ip_version) {
    if (!c || (ip_version != 0 && ip_version != 4 && ip_version != 6))
        return QUANTUM_E_INVALID;
    c->ip_version = ip_version;
    return 0;
}

/* A non-blocking UDP socket connected to the server (so that only its datagrams arrive). */
static int open_socket(quantum_client *c) {
    int fd = socket(c->server.ss_family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return QUANTUM_E_SOCKET;
    int size = SOCKET_BUFFER; /* best effort: a 1 MiB burst should not overflow it */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    if (connect(fd, (const struct sockaddr *)&c->server, c->server_len) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return QUANTUM_E_SOCKET;
    }
    close_socket(c);
    c->fd = fd;
    return 0;
}

static int resolve(quantum_client *c) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = c->ip_version == 4 ? AF_INET : c->ip_version == 6 ? AF_INET6 : AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)c->port);
    if (getaddrinfo(c->host, port, &hints, &res) != 0 || !res)
        return QUANTUM_E_RESOLVE;
    int r = QUANTUM_E_RESOLVE;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof c->server)
            continue;
        memcpy(&c->server, ai->ai_addr, ai->ai_addrlen);
        c->server_len = ai->ai_addrlen;
        r = open_socket(c); /* the first address family this host can use wins */
        if (r == 0)
            break;
    }
    freeaddrinfo(res);
    return r;
}

/* Build a connection: the first one, or a reconnect resuming our session. */
static int new_connection(quantum_client *c, int reconnect) {
    quantum_metadata meta[MAX_METADATA];
    for (size_t i = 0; i < c->nmeta; i++) {
        meta[i].key = c->meta_keys[i];
        meta[i].value = c->meta_values[i];
    }
    quantum_credentials cred;
    memset(&cred, 0, sizeof cred);
    cred.user_id = c->user_id;
    cred.ticket = c->ticket;
    cred.metadata = meta;
    cred.metadata_count = c->nmeta;
    char pin[64];
    const char *server_key = c->server_key;
    if (reconnect) {
        cred.resume_session_id = c->session_id;
        cred.resume_token = c->session_token;
        cred.resume_fallback = c->cfg.resume_fallback;
        if (c->has_server_public) { /* the key the server proved the first time, pinned now */
            sodium_bin2base64(pin, sizeof pin, c->server_public, 32,
                              sodium_base64_VARIANT_ORIGINAL);
            server_key = pin;
        }
    } else if (c->has_resume) {
        cred.resume_session_id = c->resume_id;
        cred.resume_token = c->resume_token;
        cred.resume_fallback = c->resume_fallback;
    }
    quantum_connection *conn;
    int r = quantum_connection_create(&conn, &c->cfg, &cred, server_key, &c->server,
                                      c->server_len, NULL, monotonic());
    if (r != 0)
        return r;
    quantum_connection_destroy(c->conn);
    c->conn = conn;
    return 0;
}

static void flush(quantum_client *c) {
    if (!c->conn || c->fd < 0)
        return;
    size_t len;
    double now = monotonic();
    while (quantum_connection_next_datagram(c->conn, now, c->buf, sizeof c->buf, &len) == 1) {
        /* a full socket buffer or an ICMP error is packet loss: the protocol recovers */
        (void)send(c->fd, c->buf, len, 0);
    }
}

int quantum_client_connect(quantum_client *c, const char *host, uint16_t port,
                           const char *server_key, const char *user_id, const char *ticket) {
    if (!c || !host || !user_id || port == 0)
        return QUANTUM_E_INVALID;
    if (c->phase != P_IDLE && c->phase != P_DONE)
        return QUANTUM_E_STATE;
    int has_key, has_fp;
    uint8_t key[32];
    char fp[52];
    if (q_parse_pin(server_key, key, &has_key, fp, &has_fp) != 0)
        return QUANTUM_E_SERVER_KEY;
    char *h = dup_text(host), *u = dup_text(user_id), *t = dup_text(ticket);
    char *k = dup_text(server_key);
    if (!h || !u || (ticket && !t) || (server_key && !k)) {
        free(h);
        free(u);
        free(t);
        free(k);
        return QUANTUM_E_NOMEM;
    }
    free(c->host);
    free(c->user_id);
    free(c->ticket);
    free(c->server_key);
    c->host = h;
    c->user_id = u;
    c->ticket = t;
    c->server_key = k;
    c->port = port;
    c->close_requested = 0;
    c->synth_pending = 0;
    c->has_session = 0;
    c->has_server_public = 0;
    int r = resolve(c);
    if (r == 0)
        r = new_connection(c, 0);
    if (r != 0) {
        close_socket(c);
        return r;
    }
    c->phase = P_CONNECTING;
    flush(c);
    return 0;
}

static int resumable(uint16_t code) {
    return code == QUANTUM_CLOSE_IDLE_TIMEOUT || code == QUANTUM_CLOSE_SERVER_SHUTDOWN ||
           code == QUANTUM_CLOSE_KEYS_EXHAUSTED || code == QUANTUM_CLOSE_INTERNAL_ERROR;
}

/* A failed reconnect handshake worth another try. */
static int transient(uint16_t code) {
    return resumable(code) || code == QUANTUM_CLOSE_HANDSHAKE_TIMEOUT ||
           code == QUANTUM_CLOSE_SERVER_FULL || code == QUANTUM_CLOSE_RATE_LIMITED ||
           code == QUANTUM_CLOSE_STORE_UNAVAILABLE;
}

static void schedule_reconnect(quantum_client *c, double now) {
    double delay = c->cfg.reconnect_initial_delay;
    for (int i = 1; i < c->attempt && delay < c->cfg.reconnect_max_delay; i++)
        delay *= 2;
    if (delay > c->cfg.reconnect_max_delay)
        delay = c->cfg.reconnect_max_delay;
    /* +-25 % jitter, so that many clients cut off at once do not come back in step */
    double jitter = ((double)randombytes_uniform(1001) / 1000.0 - 0.5) * 0.5;
    c->reconnect_at = now + delay * (1.0 + jitter);
    c->phase = P_WAIT_RECONNECT;
}

static void finish(quantum_client *c, uint16_t code, const char *reason, size_t len) {
    c->phase = P_DONE;
    c->synth_code = code;
    if (len > Q_MAX_REASON)
        len = Q_MAX_REASON;
    memcpy(c->reason, reason, len);
    c->reason[len] = 0;
}

static void remember_session(quantum_client *c, const quantum_event *e) {
    memcpy(c->session_id, e->session_id, 16);
    memcpy(c->session_token, e->session_token, sizeof c->session_token);
    c->session_token[QUANTUM_MAX_TOKEN] = 0;
    c->has_session = 1;
    const uint8_t *key = quantum_connection_server_public_key(c->conn);
    if (key && !c->has_server_public) {
        memcpy(c->server_public, key, 32);
        c->has_server_public = 1;
    }
}

/* The next event for the application, translating the connection's: 1, or 0 for none. */
static int next_app_event(quantum_client *c, quantum_event *ev) {
    if (c->synth_pending) {
        c->synth_pending = 0;
        memset(ev, 0, sizeof *ev);
        ev->type = QUANTUM_EVENT_DISCONNECTED;
        ev->code = c->synth_code;
        ev->reason = c->reason;
        ev->reason_length = strlen(c->reason);
        ev->rtt = -1.0;
        return 1;
    }
    while (c->conn && quantum_connection_next_event(c->conn, ev) == 1) {
        switch (ev->type) {
        case QUANTUM_EVENT_CONNECTED:
            remember_session(c, ev);
            if (c->phase == P_RECONNECTING) {
                ev->type = QUANTUM_EVENT_RECONNECTED;
                c->reconnects++;
            }
            c->phase = P_CONNECTED;
            c->attempt = 0;
            return 1;
        case QUANTUM_EVENT_DISCONNECTED: {
            double now = monotonic();
            uint16_t code = ev->code;
            if (c->phase == P_CONNECTED && !c->close_requested && c->cfg.auto_reconnect &&
                c->has_session && resumable(code)) {
                c->attempt = 1;
                schedule_reconnect(c, now);
                continue; /* not over: the application hears RECONNECTED or DISCONNECTED */
            }
            if (c->phase == P_RECONNECTING && !c->close_requested && transient(code) &&
                (c->cfg.reconnect_max_attempts == 0 ||
                 c->attempt < c->cfg.reconnect_max_attempts)) {
                c->attempt++;
                schedule_reconnect(c, now);
                continue;
            }
            finish(c, code, ev->reason ? ev->reason : "", ev->reason_length);
            ev->reason = c->reason; /* outlives the connection */
            return 1;
        }
        default:
            return 1;
        }
    }
    return 0;
}

static void start_reconnect(quantum_client *c) {
    int r = open_socket(c); /* a fresh socket: the old path may be what broke */
    if (r == 0)
        r = new_connection(c, 1);
    if (r != 0) {
        /* no socket or no memory now: count it as a failed attempt */
        if (c->cfg.reconnect_max_attempts == 0 || c->attempt < c->cfg.reconnect_max_attempts) {
            c->attempt++;
            schedule_reconnect(c, monotonic());
            return;
        }
        static const char why[] = "cannot reconnect: socket or memory unavailable";
        finish(c, QUANTUM_CLOSE_INTERNAL_ERROR, why, sizeof why - 1);
        c->synth_pending = 1;
        return;
    }
    c->phase = P_RECONNECTING;
    flush(c);
}

static void receive_all(quantum_client *c) {
    for (int i = 0; i < RECV_BATCH && c->conn; i++) {
        ssize_t n = recv(c->fd, c->buf, sizeof c->buf, 0);
        if (n < 0) {
            if (errno == EINTR || errno == ECONNREFUSED)
                continue; /* ICMP unreachable: the timers decide, as for any loss */
            break;
        }
        quantum_connection_receive(c->conn, c->buf, (size_t)n, NULL, 0, monotonic());
    }
}

int quantum_client_service(quantum_client *c, int timeout_ms, quantum_event *ev) {
    if (!c || !ev)
        return QUANTUM_E_INVALID;
    if (c->phase == P_IDLE)
        return QUANTUM_E_STATE;
    double start = monotonic();
    double deadline = timeout_ms < 0 ? -1.0 : start + timeout_ms / 1000.0;
    int last_pass = 0; /* past the deadline, the socket is still read once, without waiting */
    for (;;) {
        if (next_app_event(c, ev))
            return 1;
        if (c->phase == P_DONE)
            return 0;
        double now = monotonic();
        if (c->phase == P_WAIT_RECONNECT) {
            if (now >= c->reconnect_at) {
                start_reconnect(c);
                continue;
            }
        } else if (c->conn) {
            double t = quantum_connection_next_timer(c->conn);
            if (t >= 0 && t <= now && t != c->last_timer) {
                c->last_timer = t;
                quantum_connection_handle_timer(c->conn, now);
                flush(c);
                continue;
            }
            flush(c);
        }
        if (next_app_event(c, ev))
            return 1;
        /* wait for a datagram, the next timer or the caller's deadline */
        double until = deadline;
        double t = c->phase == P_WAIT_RECONNECT ? c->reconnect_at
                                                : quantum_connection_next_timer(c->conn);
        if (c->phase != P_WAIT_RECONNECT && t >= 0 && t == c->last_timer)
            t = now + 0.001; /* handled and still due (nothing could move it): do not spin */
        if (t >= 0 && (until < 0 || t < until))
            until = t;
        if (deadline >= 0 && now >= deadline) {
            if (last_pass)
                return 0;
            last_pass = 1;
        }
        int wait_ms = -1;
        if (until >= 0) {
            double ms = (until - now) * 1000.0;
            wait_ms = ms <= 0 ? 0 : (int)(ms + 0.999); /* round up: never spin before a timer */
        }
        if (last_pass)
            wait_ms = 0;
        if (c->fd < 0 || c->phase == P_WAIT_RECONNECT) {
            if (wait_ms > 0) {
                struct timespec ts = {wait_ms / 1000, (long)(wait_ms % 1000) * 1000000L};
                nanosleep(&ts, NULL);
            }
            continue;
        }
        struct pollfd pfd = {c->fd, POLLIN, 0};
        int r = poll(&pfd, 1, wait_ms);
        if (r < 0 && errno != EINTR)
            return QUANTUM_E_SOCKET;
        if (r > 0) {
            receive_all(c);
            flush(c);
        }
    }
}

int quantum_client_wait_connected(quantum_client *c, int timeout_ms, quantum_event *ev) {
    if (!c || !ev)
        return QUANTUM_E_INVALID;
    double deadline = monotonic() + (timeout_ms < 0 ? 1e9 : timeout_ms / 1000.0);
    for (;;) {
        double left = deadline - monotonic();
        if (left <= 0)
            return QUANTUM_E_TIMEOUT;
        int r = quantum_client_service(c, (int)(left * 1000.0) + 1, ev);
        if (r < 0)
            return r;
        if (r == 0)
            continue;
        if (ev->type == QUANTUM_EVENT_CONNECTED || ev->type == QUANTUM_EVENT_RECONNECTED)
            return QUANTUM_OK;
        if (ev->type == QUANTUM_EVENT_DISCONNECTED)
            return QUANTUM_E_DISCONNECTED;
        /* nothing else can arrive before the connection is established */
    }
}

int quantum_client_send(quantum_client *c, uint8_t channel, quantum_delivery mode,
                        const void *data, size_t length) {
    if (!c)
        return QUANTUM_E_INVALID;
    switch (c->phase) {
    case P_CONNECTED:
        break;
    case P_WAIT_RECONNECT:
    case P_RECONNECTING:
        return QUANTUM_E_RECONNECTING;
    case P_DONE:
        return QUANTUM_E_CLOSED;
    default:
        return QUANTUM_E_STATE;
    }
    int r = quantum_connection_send(c->conn, channel, mode, data, length);
    if (r == 0)
        flush(c);
    return r;
}

int quantum_client_heartbeat(quantum_client *c, int timeout_ms, uint32_t *keepalive_id) {
    if (!c || timeout_ms <= 0)
        return QUANTUM_E_INVALID;
    if (c->phase == P_WAIT_RECONNECT || c->phase == P_RECONNECTING)
        return QUANTUM_E_RECONNECTING;
    if (c->phase != P_CONNECTED)
        return c->phase == P_DONE ? QUANTUM_E_CLOSED : QUANTUM_E_STATE;
    int r = quantum_connection_heartbeat(c->conn, timeout_ms / 1000.0, monotonic(), keepalive_id);
    if (r == 0)
        flush(c);
    return r;
}

int quantum_client_close(quantum_client *c, const char *reason) {
    if (!c)
        return QUANTUM_E_INVALID;
    if (!reason)
        reason = "client closed";
    switch (c->phase) {
    case P_IDLE:
        return QUANTUM_E_STATE;
    case P_DONE:
        return QUANTUM_E_CLOSED;
    case P_WAIT_RECONNECT:
        /* nothing to tell the server: just stop trying */
        finish(c, QUANTUM_CLOSE_NORMAL, reason, strlen(reason));
        c->synth_pending = 1;
        return 0;
    default:
        break;
    }
    c->close_requested = 1;
    int r = quantum_connection_close(c->conn, reason);
    if (r == QUANTUM_E_CLOSED)
        r = 0; /* already closing: the DISCONNECTED event is on its way */
    flush(c);
    return r;
}

void quantum_client_abort(quantum_client *c) {
    if (!c)
        return;
    quantum_connection_destroy(c->conn);
    c->conn = NULL;
    close_socket(c);
    c->phase = P_DONE;
    c->synth_pending = 0;
}

int quantum_client_rebind(quantum_client *c) {
    if (!c)
        return QUANTUM_E_INVALID;
    if (c->phase != P_CONNECTED && c->phase != P_CONNECTING && c->phase != P_RECONNECTING)
        return QUANTUM_E_STATE;
    int r = open_socket(c);
    if (r == 0)
        flush(c);
    return r;
}

int quantum_client_session(const quantum_client *c, uint8_t session_id[16], char *token,
                           size_t token_capacity) {
    if (!c || !session_id)
        return QUANTUM_E_INVALID;
    if (!c->has_session)
        return QUANTUM_E_STATE;
    memcpy(session_id, c->session_id, 16);
    if (token) {
        size_t n = strlen(c->session_token);
        if (token_capacity <= n)
            return QUANTUM_E_BUFFER;
        memcpy(token, c->session_token, n + 1);
    }
    return 0;
}

int quantum_client_stats(const quantum_client *c, quantum_stats *s) {
    if (!c || !s)
        return QUANTUM_E_INVALID;
    memset(s, 0, sizeof *s);
    s->srtt = s->min_rtt = -1.0;
    if (c->conn)
        quantum_connection_stats(c->conn, s);
    s->reconnects = c->reconnects;
    return 0;
}

int quantum_client_fd(const quantum_client *c) { return c ? c->fd : -1; }

uint16_t quantum_client_local_port(const quantum_client *c) {
    if (!c || c->fd < 0)
        return 0;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(c->fd, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

int quantum_client_server_public_key(const quantum_client *c, uint8_t key[32]) {
    if (!c || !key)
        return QUANTUM_E_INVALID;
    const uint8_t *k = c->conn ? quantum_connection_server_public_key(c->conn) : NULL;
    if (k) {
        memcpy(key, k, 32);
        return 0;
    }
    if (c->has_server_public) {
        memcpy(key, c->server_public, 32);
        return 0;
    }
    return QUANTUM_E_STATE;
}
