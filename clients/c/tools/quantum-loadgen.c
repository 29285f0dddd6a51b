/* quantum-loadgen: the heartbeat benchmark's load side on libquantum's sans-I/O connections
 * (python -m benchmarks.heartbeat --client c drives it; benchmarks/c_loadgen.py).
 *
 *   quantum-loadgen HOST PORT [--sockets N] [--no-gso] [--coalesce-us N] [--coalesce-above N]
 *
 * Many client connections share a few UDP sockets: replies are routed to their connection by
 * the connection id (header bytes 6..22), every timer sits in one heap, and datagrams are
 * read and written in batches once per pass of the loop, as the Python generator
 * (benchmarks/loadgen.py) does with its outbox: recvmmsg in, and out one sendmmsg whose
 * messages each carry a run of equal-sized datagrams as one UDP GSO buffer (UDP_SEGMENT),
 * so the kernel walks its send path once per run instead of once per datagram (plain
 * sendmmsg where the kernel refuses GSO). Commands arrive on stdin, one per line, and each
 * is answered with one JSON object on stdout:
 *
 *   connect COUNT PREFIX [IN_FLIGHT]   open COUNT connections (users PREFIX-0, PREFIX-1...)
 *   run CLIENTS SECONDS [pool]         closed loop of keepalives on the first CLIENTS
 *   quit
 *
 * A failed command answers {"error": "..."}; bad arguments exit 2. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "quantum.h"

#define MAX_SOCKETS 16
#define BATCH 64
#define DGRAM 1500
#define GSO_MAX_BYTES 65000 /* a GSO buffer stays under the 64 KiB UDP limit */
#define RECV_TIMEOUT_MS 5   /* the longest a blocking receive waits: the timers' granularity */
#define ACK_TIMEOUT 2.0
#define SOCKET_BUFFER (4 * 1024 * 1024)
/* how long a pass that found only a trickle of replies lets them pool (see pass()) */
#ifndef DEFAULT_COALESCE_US
#define DEFAULT_COALESCE_US 4000
#endif
#define DEFAULT_COALESCE_ABOVE 256 /* keepalives in flight below which no pass waits */

typedef struct client {
    quantum_connection *conn;
    int sock;
    int64_t keepalive_id; /* the outstanding one, -1: none */
    double sent_at;
    double timer_at; /* what the heap holds for it; < 0: nothing */
    int active, settled, established, closed;
} client;

typedef struct heap_item {
    double at;
    uint32_t index;
} heap_item;

typedef struct doubles {
    double *v;
    size_t n, cap;
} doubles;

typedef struct gen {
    struct sockaddr_storage server;
    socklen_t server_len;
    int socks[MAX_SOCKETS], nsocks;
    client *clients;
    size_t nclients, cap;
    uint32_t *table; /* open addressing: cid -> client index + 1 */
    size_t table_cap;
    heap_item *heap;
    size_t heap_len, heap_cap;
    /* outbox: datagrams of this pass, per socket, back to back */
    uint8_t out_buf[MAX_SOCKETS][BATCH * DGRAM];
    size_t out_len[MAX_SOCKETS][BATCH], out_bytes[MAX_SOCKETS];
    int out_n[MAX_SOCKETS];
    int gso; /* the kernel takes UDP_SEGMENT */
    double coalesce; /* seconds a pass that found a trickle lets replies pool (0: never) */
    size_t coalesce_above; /* keepalives in flight from which passes may wait */
    uint64_t coalesced;    /* passes of this run that waited */
    int last_got;    /* datagrams the last pass read */
    /* handshakes */
    size_t target, launched, done, failed;
    const char *prefix;
    int handshaking;
    /* the closed loop */
    int running;
    size_t outstanding;
    uint64_t sent, acknowledged, timed_out, late;
    doubles rtts, pooled;
} gen;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* user and system CPU seconds of this process */
static void cpu_split(double *user, double *sys) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    *sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Make room for one more element in a growable array (doubling); 0 or -1. */
static int grow(void *array, size_t len, size_t *cap, size_t elem, size_t first) {
    if (len < *cap)
        return 0;
    void **p = array;
    size_t n = *cap ? *cap * 2 : first;
    void *grown = realloc(*p, n * elem);
    if (!grown)
        return -1;
    *p = grown;
    *cap = n;
    return 0;
}

static void push_double(doubles *d, double v) {
    if (grow(&d->v, d->n, &d->cap, sizeof *d->v, 4096) == 0)
        d->v[d->n++] = v;
}

/* ------------------------------------------------------------------------- the heap */

static void heap_push(gen *g, double at, uint32_t index) {
    if (grow(&g->heap, g->heap_len, &g->heap_cap, sizeof *g->heap, 1024) != 0)
        return;
    size_t i = g->heap_len++;
    while (i > 0 && g->heap[(i - 1) / 2].at > at) {
        g->heap[i] = g->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    g->heap[i].at = at;
    g->heap[i].index = index;
}

static heap_item heap_pop(gen *g) {
    heap_item top = g->heap[0], last = g->heap[--g->heap_len];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= g->heap_len)
            break;
        if (c + 1 < g->heap_len && g->heap[c + 1].at < g->heap[c].at)
            c++;
        if (g->heap[c].at >= last.at)
            break;
        g->heap[i] = g->heap[c];
        i = c;
    }
    if (g->heap_len)
        g->heap[i] = last;
    return top;
}

/* Keep at most one live heap entry per client: a stale one is skipped when popped. */
static void schedule(gen *g, uint32_t index) {
    client *cl = &g->clients[index];
    double t = cl->closed ? -1.0 : quantum_connection_next_timer(cl->conn);
    if (t >= 0 && (cl->timer_at < 0 || t < cl->timer_at)) {
        cl->timer_at = t;
        heap_push(g, t, index);
    } else if (t < 0) {
        cl->timer_at = -1.0;
    }
}

/* ------------------------------------------------------------------ connection ids */

static size_t cid_hash(const uint8_t *cid, size_t cap) {
    uint64_t h;
    memcpy(&h, cid, 8); /* connection ids are random */
    return (size_t)(h & (cap - 1));
}

static int table_grow(gen *g) {
    size_t cap = g->table_cap ? g->table_cap * 2 : 4096;
    uint32_t *t = calloc(cap, sizeof *t);
    if (!t)
        return -1;
    for (size_t i = 0; i < g->nclients; i++) {
        size_t h = cid_hash(quantum_connection_id(g->clients[i].conn), cap);
        while (t[h])
            h = (h + 1) & (cap - 1);
        t[h] = (uint32_t)i + 1;
    }
    free(g->table);
    g->table = t;
    g->table_cap = cap;
    return 0;
}

static client *lookup(gen *g, const uint8_t *cid, uint32_t *index) {
    if (!g->table_cap)
        return NULL;
    for (size_t h = cid_hash(cid, g->table_cap);; h = (h + 1) & (g->table_cap - 1)) {
        uint32_t v = g->table[h];
        if (!v)
            return NULL;
        if (memcmp(quantum_connection_id(g->clients[v - 1].conn), cid, 16) == 0) {
            *index = v - 1;
            return &g->clients[v - 1];
        }
    }
}

/* --------------------------------------------------------------------- datagrams */

typedef struct gso_control {
    _Alignas(size_t) char buf[CMSG_SPACE(sizeof(uint16_t))]; /* aligned as a cmsghdr */
} gso_control;

/* Send the pass's datagrams: runs of equal size (the last of a run may be shorter) become
 * one GSO buffer each, all runs in one sendmmsg. */
static void send_outbox(gen *g, int s) {
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    gso_control control[BATCH];
    int n = g->out_n[s], nmsg = 0;
    size_t offset = 0;
    for (int i = 0; i < n;) {
        size_t seg = g->out_len[s][i], bytes = seg;
        int j = i + 1;
        while (g->gso && j < n && g->out_len[s][j] <= seg && bytes + g->out_len[s][j] <=
               GSO_MAX_BYTES) {
            bytes += g->out_len[s][j];
            if (g->out_len[s][j++] < seg)
                break; /* a shorter one ends the run */
        }
        memset(&msgs[nmsg], 0, sizeof msgs[nmsg]);
        iov[nmsg].iov_base = g->out_buf[s] + offset;
        iov[nmsg].iov_len = bytes;
        struct msghdr *h = &msgs[nmsg].msg_hdr;
        h->msg_iov = &iov[nmsg];
        h->msg_iovlen = 1;
        /* no msg_name: the socket is connected to the server (see main) */
        if (j - i > 1) {
            h->msg_control = control[nmsg].buf;
            h->msg_controllen = sizeof control[nmsg].buf;
            struct cmsghdr *cm = CMSG_FIRSTHDR(h);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t size = (uint16_t)seg;
            memcpy(CMSG_DATA(cm), &size, sizeof size);
        }
        nmsg++;
        offset += bytes;
        i = j;
    }
    int done = 0;
    while (done < nmsg) {
        int r = sendmmsg(g->socks[s], msgs + done, (unsigned)(nmsg - done), MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && g->gso && (errno == EIO || errno == EINVAL || errno == ENOPROTOOPT)) {
            g->gso = 0; /* no GSO here: plain datagrams from now on (this pass is lost) */
            break;
        }
        if (r <= 0)
            break; /* a full buffer is loss, as on the network */
        done += r;
    }
    g->out_n[s] = 0;
    g->out_bytes[s] = 0;
}

/* Build and queue what client `index` has to send at `now` (the time its input was read:
 * one clock read per batch of datagrams, not one per client). */
static void flush_client(gen *g, uint32_t index, double now) {
    client *cl = &g->clients[index];
    int s = cl->sock;
    size_t len;
    for (;;) {
        if (g->out_n[s] == BATCH)
            send_outbox(g, s);
        uint8_t *at = g->out_buf[s] + g->out_bytes[s];
        if (quantum_connection_next_datagram(cl->conn, now, at, DGRAM, &len) != 1)
            break;
        g->out_len[s][g->out_n[s]++] = len;
        g->out_bytes[s] += len;
    }
    schedule(g, index);
}

static void send_keepalive(gen *g, client *cl, double now) {
    uint32_t id;
    if (quantum_connection_keepalive(cl->conn, &id) != 0) {
        cl->keepalive_id = -1;
        return;
    }
    cl->keepalive_id = id;
    cl->sent_at = now;
    g->sent++;
}

static void launch(gen *g);

static void handshake_finished(gen *g, int ok) {
    if (!g->handshaking)
        return;
    if (ok)
        g->done++;
    else
        g->failed++;
    if (g->launched - g->failed < g->target)
        launch(g); /* one finished, one more in flight: the pipeline stays full */
}

static void drain_events(gen *g, uint32_t index, double now) {
    client *cl = &g->clients[index];
    quantum_event ev;
    while (quantum_connection_next_event(cl->conn, &ev) == 1) {
        if (ev.type == QUANTUM_EVENT_KEEPALIVE) {
            if ((int64_t)ev.keepalive_id != cl->keepalive_id) {
                g->late++;
                continue;
            }
            g->acknowledged++;
            push_double(&g->rtts, now - cl->sent_at);
            if (g->running) {
                send_keepalive(g, cl, now);
            } else {
                cl->keepalive_id = -1;
                g->outstanding--;
            }
        } else if (ev.type == QUANTUM_EVENT_CONNECTED) {
            cl->established = 1;
            if (!cl->settled) {
                cl->settled = 1;
                handshake_finished(g, 1);
            }
        } else if (ev.type == QUANTUM_EVENT_DISCONNECTED) {
            cl->closed = 1;
            if (cl->active && cl->keepalive_id >= 0) {
                cl->keepalive_id = -1;
                g->outstanding--;
            }
            cl->active = 0;
            if (!cl->settled) {
                cl->settled = 1;
                handshake_finished(g, 0);
            }
        }
    }
}

/* Read what has arrived on socket s; returns how many datagrams. With `block`, wait for the
 * first one (up to the socket's receive timeout), then take whatever else is there: one
 * system call where poll + recvmmsg would be two. */
static int receive_socket(gen *g, int s, int block) {
    static uint8_t bufs[BATCH][DGRAM];
    static struct mmsghdr msgs[BATCH];
    static struct iovec iov[BATCH];
    if (!iov[0].iov_base)
        for (int i = 0; i < BATCH; i++) { /* the kernel only writes msg_len and the flags */
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = DGRAM;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
    int total = 0;
    for (int round = 0; round < 16; round++) {
        int flags = block && round == 0 ? MSG_WAITFORONE : MSG_DONTWAIT;
        int n = recvmmsg(g->socks[s], msgs, BATCH, flags, NULL);
        if (n <= 0)
            break;
        total += n;
        double now = now_s();
        for (int i = 0; i < n; i++) {
            size_t len = msgs[i].msg_len;
            uint32_t index;
            client *cl = len >= 22 ? lookup(g, bufs[i] + 6, &index) : NULL;
            if (!cl || cl->closed)
                continue;
            quantum_connection_receive(cl->conn, bufs[i], len, NULL, 0, now);
            drain_events(g, index, now);
            flush_client(g, index, now);
        }
        if (n < BATCH)
            break;
    }
    return total;
}

static void run_timers(gen *g) {
    double now = now_s();
    while (g->heap_len && g->heap[0].at <= now) {
        heap_item it = heap_pop(g);
        client *cl = &g->clients[it.index];
        if (cl->timer_at != it.at || cl->closed)
            continue; /* superseded */
        cl->timer_at = -1.0;
        quantum_connection_handle_timer(cl->conn, now);
        drain_events(g, it.index, now);
        flush_client(g, it.index, now);
    }
}

/* One pass: read what has arrived, run due timers, send everything built meanwhile.
 *
 * Reading takes one system call: with one socket and no timer due within the receive
 * timeout, recvmmsg blocks until the first datagram and takes whatever else is there (it
 * returns at once if something already is); otherwise a non-blocking read, and poll only if
 * that found nothing.
 *
 * Coalescing: with many keepalives in flight (coalesce_above or more), a pass whose
 * read found only a trickle (fewer than BATCH / 2) first lets the replies pool for coalesce
 * seconds (bounded by the next timer), so that one wake-up reads, answers and sends many in
 * one recvmmsg and one sendmmsg (the kernel's per-call and per-wake-up costs are most of a
 * round trip's). While the server is the bottleneck its queue holds the other keepalives
 * meanwhile, so the round trips are not slowed (Little's law: their time is in flight / the
 * server's rate); as soon as a read brings BATCH / 2 or more, no pass waits. A small closed
 * loop (the tests' few clients) never waits. */
static void pass(gen *g, double max_wait) {
    double wait = max_wait;
    if (g->heap_len) {
        double t = g->heap[0].at - now_s();
        if (t < wait)
            wait = t;
    }
    if (wait < 0)
        wait = 0;
    if (g->coalesce > 0 && g->outstanding >= g->coalesce_above && g->last_got > 0 &&
        g->last_got < BATCH / 2 && wait > 0) {
        double d = g->coalesce < wait ? g->coalesce : wait;
        g->coalesced++;
        struct timespec ts = {0, (long)(d * 1e9)};
        nanosleep(&ts, NULL);
        wait -= d;
    }
    int got = 0, wait_ms = (int)ceil(wait * 1000);
    if (g->nsocks == 1 && wait_ms >= RECV_TIMEOUT_MS) {
        /* one socket: block in recvmmsg itself (its SO_RCVTIMEO bounds the wait) */
        got = receive_socket(g, 0, 1);
    } else {
        for (int s = 0; s < g->nsocks; s++)
            got += receive_socket(g, s, 0);
        if (!got && wait_ms > 0) {
            struct pollfd pfd[MAX_SOCKETS];
            for (int s = 0; s < g->nsocks; s++) {
                pfd[s].fd = g->socks[s];
                pfd[s].events = POLLIN;
                pfd[s].revents = 0;
            }
            if (poll(pfd, (nfds_t)g->nsocks, wait_ms) > 0)
                for (int s = 0; s < g->nsocks; s++)
                    if (pfd[s].revents & POLLIN)
                        got += receive_socket(g, s, 0);
        }
    }
    g->last_got = got;
    run_timers(g);
    for (int s = 0; s < g->nsocks; s++)
        if (g->out_n[s])
            send_outbox(g, s);
}

/* ------------------------------------------------------------------------- commands */

static void launch(gen *g) {
    if (grow(&g->clients, g->nclients, &g->cap, sizeof *g->clients, 1024) != 0)
        return;
    if ((g->nclients + 1) * 2 > g->table_cap && table_grow(g) != 0)
        return;
    quantum_config cfg;
    quantum_config_default(&cfg);
    cfg.keepalive_interval = 0; /* the closed loop sends them, no timer */
    cfg.idle_timeout = 3600;
    cfg.handshake_timeout = 30;
    cfg.handshake_tries = 10;
    cfg.auto_reconnect = 0;
    char user[128];
    snprintf(user, sizeof user, "%s-%zu", g->prefix, g->nclients);
    quantum_credentials cred;
    memset(&cred, 0, sizeof cred);
    cred.user_id = user;
    client *cl = &g->clients[g->nclients];
    memset(cl, 0, sizeof *cl);
    if (quantum_connection_create(&cl->conn, &cfg, &cred, NULL, &g->server, g->server_len, NULL,
                                  now_s()) != 0) {
        g->launched++;
        g->failed++;
        return;
    }
    uint32_t index = (uint32_t)g->nclients++;
    cl->sock = (int)(index % (uint32_t)g->nsocks);
    cl->keepalive_id = -1;
    cl->timer_at = -1.0;
    size_t h = cid_hash(quantum_connection_id(cl->conn), g->table_cap);
    while (g->table[h])
        h = (h + 1) & (g->table_cap - 1);
    g->table[h] = index + 1;
    g->launched++;
    flush_client(g, index, now_s());
}

static void cmd_connect(gen *g, size_t count, const char *prefix, size_t in_flight) {
    double t0 = now_s();
    g->target = count;
    g->launched = g->done = g->failed = 0;
    g->prefix = prefix;
    g->handshaking = 1;
    for (size_t i = 0; i < in_flight && i < count; i++)
        launch(g);
    while (g->done < count && g->failed <= count / 100 + 1 && now_s() - t0 < 600)
        pass(g, 0.05);
    g->handshaking = 0;
    if (g->done < count) {
        printf("{\"error\": \"handshakes: %zu of %zu established, %zu refused\"}\n", g->done,
               count, g->failed);
        return;
    }
    printf("{\"established\": %zu, \"failed\": %zu, \"seconds\": %.3f}\n", g->done, g->failed,
           now_s() - t0);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median and 99th percentile (nearest rank), in ms; -1 for none. */
static void percentiles(doubles *d, double *p50, double *p99) {
    *p50 = *p99 = -1;
    if (!d->n)
        return;
    qsort(d->v, d->n, sizeof *d->v, cmp_double);
    size_t last = d->n - 1;
    *p50 = d->v[(size_t)llround(0.50 * (double)last)] * 1000;
    *p99 = d->v[(size_t)llround(0.99 * (double)last)] * 1000;
}

static void print_ms(const char *name, double v) {
    if (v < 0)
        printf(", \"%s\": null", name);
    else
        printf(", \"%s\": %.3f", name, v);
}

static void expire(gen *g) {
    double deadline = now_s() - ACK_TIMEOUT;
    for (size_t i = 0; i < g->nclients; i++) {
        client *cl = &g->clients[i];
        if (!cl->active || cl->keepalive_id < 0 || cl->sent_at >= deadline)
            continue;
        g->timed_out++;
        if (g->running) {
            double now = now_s();
            send_keepalive(g, cl, now);
            flush_client(g, (uint32_t)i, now);
        } else {
            cl->keepalive_id = -1;
            g->outstanding--;
        }
    }
}

static void cmd_run(gen *g, size_t clients, double duration, int pool) {
    size_t chosen = 0;
    for (size_t i = 0; i < g->nclients && chosen < clients; i++)
        if (g->clients[i].established && !g->clients[i].closed)
            chosen++;
    if (chosen < clients) {
        printf("{\"error\": \"only %zu of %zu clients are established\"}\n", chosen, clients);
        return;
    }
    g->sent = g->acknowledged = g->timed_out = g->late = g->coalesced = 0;
    g->rtts.n = 0;
    double user0, sys0;
    cpu_split(&user0, &sys0);
    double t0 = now_s();
    g->running = 1;
    g->outstanding = 0;
    for (size_t i = 0, n = 0; i < g->nclients && n < clients; i++) {
        client *cl = &g->clients[i];
        if (!cl->established || cl->closed)
            continue;
        n++;
        cl->active = 1;
        double now = now_s();
        send_keepalive(g, cl, now);
        g->outstanding++;
        flush_client(g, (uint32_t)i, now);
    }
    double end = t0 + duration, last_expire = t0;
    while (now_s() < end) {
        pass(g, end - now_s() < 0.05 ? end - now_s() : 0.05);
        if (now_s() - last_expire > 0.25) {
            expire(g);
            last_expire = now_s();
        }
    }
    g->running = 0;
    double ran = now_s() - t0, drain_end = now_s() + ACK_TIMEOUT + 0.5;
    while (g->outstanding > 0 && now_s() < drain_end) {
        pass(g, 0.05);
        expire(g);
    }
    for (size_t i = 0; i < g->nclients; i++) {
        g->clients[i].active = 0;
        g->clients[i].keepalive_id = -1;
    }
    double user1, sys1;
    cpu_split(&user1, &sys1);
    if (pool)
        for (size_t i = 0; i < g->rtts.n; i++)
            push_double(&g->pooled, g->rtts.v[i]);
    double p50, p99;
    percentiles(&g->rtts, &p50, &p99);
    printf("{\"sent\": %llu, \"acknowledged\": %llu, \"unanswered\": %lld, \"timed_out\": %llu, "
           "\"late\": %llu, \"duration_s\": %.3f",
           (unsigned long long)g->sent, (unsigned long long)g->acknowledged,
           (long long)g->sent - (long long)g->acknowledged, (unsigned long long)g->timed_out,
           (unsigned long long)g->late, ran);
    print_ms("rtt_p50_ms", p50);
    print_ms("rtt_p99_ms", p99);
    printf(", \"loadgen_cpu_s\": %.3f, \"loadgen_user_cpu_s\": %.3f, "
           "\"loadgen_system_cpu_s\": %.3f, \"gso\": %s, \"coalesced_passes\": %llu",
           user1 - user0 + sys1 - sys0, user1 - user0, sys1 - sys0, g->gso ? "true" : "false",
           (unsigned long long)g->coalesced);
    if (pool) {
        percentiles(&g->pooled, &p50, &p99);
        print_ms("pooled_rtt_p50_ms", p50);
        print_ms("pooled_rtt_p99_ms", p99);
    }
    printf("}\n");
}

static int usage(const char *why) {
    fprintf(stderr, "quantum-loadgen: %s\nusage: quantum-loadgen HOST PORT [--sockets N] [--no-gso] "
            "[--coalesce-us N] [--coalesce-above N]\n", why);
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 3)
        return usage("HOST and PORT are required");
    int nsocks = 1; /* one socket batches best; the server sees one source either way */
    int no_gso = 0;
    long coalesce_us = DEFAULT_COALESCE_US, coalesce_above = DEFAULT_COALESCE_ABOVE;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--sockets") == 0 && i + 1 < argc) {
            nsocks = atoi(argv[++i]);
            if (nsocks < 1 || nsocks > MAX_SOCKETS)
                return usage("--sockets: 1..16");
        } else if (strcmp(argv[i], "--no-gso") == 0) {
            no_gso = 1;
        } else if (strcmp(argv[i], "--coalesce-us") == 0 && i + 1 < argc) {
            char *end;
            coalesce_us = strtol(argv[++i], &end, 10);
            if (*end || coalesce_us < 0 || coalesce_us > 100000)
                return usage("--coalesce-us: 0..100000");
        } else if (strcmp(argv[i], "--coalesce-above") == 0 && i + 1 < argc) {
            char *end;
            coalesce_above = strtol(argv[++i], &end, 10);
            if (*end || coalesce_above < 1 || coalesce_above > 1000000)
                return usage("--coalesce-above: 1..1000000");
        } else {
            return usage("unknown option");
        }
    }
    static gen g;
    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_DGRAM;
    if (getaddrinfo(argv[1], argv[2], &hints, &res) != 0 || !res)
        return usage("cannot resolve HOST PORT");
    memcpy(&g.server, res->ai_addr, res->ai_addrlen);
    g.server_len = res->ai_addrlen;
    freeaddrinfo(res);
    g.nsocks = nsocks;
    g.gso = !no_gso;
    g.coalesce = (double)coalesce_us / 1e6;
    g.coalesce_above = (size_t)coalesce_above;
    for (int s = 0; s < nsocks; s++) {
        g.socks[s] = socket(g.server.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0); /* blocking: see pass() */
        /* connected to the server: the kernel resolves the route once, not per datagram sent,
         * and only the server's datagrams are delivered to it */
        if (g.socks[s] < 0 || connect(g.socks[s], (struct sockaddr *)&g.server, g.server_len) != 0)
            return usage("cannot open a UDP socket to HOST PORT");
        int size = SOCKET_BUFFER;
        setsockopt(g.socks[s], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
        setsockopt(g.socks[s], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        struct timeval timeout = {0, RECV_TIMEOUT_MS * 1000};
        setsockopt(g.socks[s], SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    char line[512];
    while (fgets(line, sizeof line, stdin)) {
        char cmd[32] = "", prefix[128] = "bench", extra[16] = "";
        double a = 0, b = 0;
        int n = sscanf(line, "%31s", cmd);
        if (n != 1)
            continue;
        if (strcmp(cmd, "connect") == 0) {
            unsigned long count = 0, in_flight = 256;
            if (sscanf(line, "%*s %lu %127s %lu", &count, prefix, &in_flight) < 1 || count == 0)
                printf("{\"error\": \"usage: connect COUNT PREFIX [IN_FLIGHT]\"}\n");
            else
                cmd_connect(&g, count, prefix, in_flight ? in_flight : 1);
        } else if (strcmp(cmd, "run") == 0) {
            if (sscanf(line, "%*s %lf %lf %15s", &a, &b, extra) < 2 || a < 1 || !(b > 0))
                printf("{\"error\": \"usage: run CLIENTS SECONDS [pool]\"}\n");
            else
                cmd_run(&g, (size_t)a, b, strcmp(extra, "pool") == 0);
        } else if (strcmp(cmd, "quit") == 0) {
            printf("{}\n");
            break;
        } else {
            printf("{\"error\": \"unknown command %s\"}\n", cmd);
        }
    }
    for (size_t i = 0; i < g.nclients; i++)
        quantum_connection_destroy(g.clients[i].conn);
    free(g.clients);
    free(g.table);
    free(g.heap);
    free(g.rtts.v);
    free(g.pooled.v);
    for (int s = 0; s < nsocks; s++)
        close(g.socks[s]);
    return 0;
}
