/* quantum-chat: a line-based chat client (for examples/chat_room.py).
 *
 *   quantum-chat HOST PORT --server-key KEY --user USER [--room ROOM] [--ticket TICKET]
 *
 * Each line read from stdin is sent as one reliable message; each message received is
 * printed as one line on stdout. At the end of stdin the client closes gracefully and
 * exits 0; a lost or refused connection exits 1; bad arguments exit 2. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quantum.h"

static int usage(const char *why) {
    fprintf(stderr, "quantum-chat: %s\nusage: quantum-chat HOST PORT --server-key KEY --user USER "
                    "[--room ROOM] [--ticket TICKET]\n", why);
    return 2;
}

/* Print every event until none is left; returns 1 when the connection is over. */
static int pump(quantum_client *c, int timeout_ms, int *code) {
    quantum_event ev;
    int r;
    while ((r = quantum_client_service(c, timeout_ms, &ev)) == 1) {
        timeout_ms = 0;
        if (ev.type == QUANTUM_EVENT_MESSAGE) {
            fwrite(ev.data, 1, ev.length, stdout);
            fputc('\n', stdout);
            fflush(stdout);
        } else if (ev.type == QUANTUM_EVENT_DISCONNECTED) {
            *code = ev.code;
            if (ev.code != QUANTUM_CLOSE_NORMAL || ev.by_peer)
                fprintf(stderr, "quantum-chat: disconnected (%s): %s\n",
                        quantum_close_code_name(ev.code), ev.reason);
            return 1;
        }
    }
    return r < 0;
}

int main(int argc, char **argv) {
    const char *host = NULL, *key = NULL, *user = NULL, *room = NULL, *ticket = NULL;
    long port = 0;
    int positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--server-key") == 0 && next)
            key = argv[++i];
        else if (strcmp(argv[i], "--user") == 0 && next)
            user = argv[++i];
        else if (strcmp(argv[i], "--room") == 0 && next)
            room = argv[++i];
        else if (strcmp(argv[i], "--ticket") == 0 && next)
            ticket = argv[++i];
        else if (argv[i][0] == '-')
            return usage("unknown or incomplete option");
        else if (positional == 0 && ++positional)
            host = argv[i];
        else if (positional == 1 && ++positional) {
            char *end;
            port = strtol(argv[i], &end, 10);
            if (*end || port < 1 || port > 65535)
                return usage("PORT must be 1..65535");
        } else
            return usage("too many arguments");
    }
    if (!host || !port || !key || !user)
        return usage("HOST, PORT, --server-key and --user are required");
    quantum_client *c;
    quantum_event ev;
    int r = quantum_client_create(&c, NULL);
    if (r == 0 && room)
        r = quantum_client_set_metadata(c, "room", room);
    if (r == 0)
        r = quantum_client_connect(c, host, (uint16_t)port, key, user, ticket);
    if (r == 0)
        r = quantum_client_wait_connected(c, 10000, &ev);
    if (r != 0) {
        fprintf(stderr, "quantum-chat: cannot connect: %s\n",
                r == QUANTUM_E_DISCONNECTED ? ev.reason : quantum_error_string(r));
        quantum_client_destroy(c);
        return 1;
    }
    char line[4096];
    size_t have = 0;
    int code = -1, eof = 0;
    while (!eof) {
        struct pollfd pfd = {STDIN_FILENO, POLLIN, 0};
        if (poll(&pfd, 1, 10) > 0) {
            ssize_t n = read(STDIN_FILENO, line + have, sizeof line - 1 - have);
            if (n <= 0 && !(n < 0 && errno == EINTR))
                eof = 1;
            if (n > 0)
                have += (size_t)n;
            char *nl;
            while ((nl = memchr(line, '\n', have))) {
                size_t len = (size_t)(nl - line);
                if (quantum_client_send(c, 0, QUANTUM_RELIABLE_ORDERED, line, len) != 0)
                    fprintf(stderr, "quantum-chat: could not send a line\n");
                memmove(line, nl + 1, have - len - 1);
                have -= len + 1;
            }
            if (have == sizeof line - 1) /* an overlong line goes as it is */
                have = 0;
        }
        if (pump(c, 0, &code)) {
            quantum_client_destroy(c);
            return 1;
        }
    }
    quantum_client_close(c, "client closed");
    while (!pump(c, 100, &code))
        ;
    quantum_client_destroy(c);
    return code == QUANTUM_CLOSE_NORMAL ? 0 : 1;
}
