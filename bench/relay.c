/*
 * The simplest TCP relay in C: a floor for what any user-space relay pays a round trip, and a
 * measure of what one reaches downstream on the machine.
 *
 *     cc -O2 -o relay bench/relay.c && ./relay BACKEND_PORT
 *
 * The benchmark harness (bench/targets.py) compiles it into the run's temporary directory. It
 * listens on a port of 127.0.0.1 chosen by the OS and prints {"port": N} on one line once it
 * accepts connections; SIGTERM or SIGINT stops it. For each accepted connection it opens one
 * to 127.0.0.1:BACKEND_PORT and relays bytes both ways: plain TCP, no WebSocket.
 *
 * One thread, one epoll set (level-triggered), non-blocking sockets with TCP_NODELAY. Each
 * direction has a 1 MiB buffer (the tunnel's read size): a read fills it, a write empties it; what a write leaves is
 * sent when the socket reports EPOLLOUT, and until then the other socket is not read (that is
 * the backpressure). The client is not read before the backend connection is up (its bytes
 * wait in the kernel). A socket is read only when its buffer is empty, so by the time it ends
 * everything it sent has been passed on; then, or when either socket fails, both are closed.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFFER_SIZE (1024 * 1024)
#define MAX_EVENTS 256

struct pair;

/* One socket of a relayed connection; `out` holds bytes read from it for the other socket. */
struct end {
    int fd;
    struct pair *pair;
    struct end *other;
    char *out;
    size_t start, stop; /* out[start:stop] is still to be written to other->fd */
    int eof;            /* it read 0 bytes: the peer closed */
    unsigned events;    /* what epoll waits for on fd now */
};

struct pair {
    struct end client, backend;
    int connected; /* the backend connection is up */
    int closed;
    struct pair *next_closed;
};

static volatile sig_atomic_t stopping = 0;
static int epoll_fd = -1;
static struct pair *closed_pairs = NULL;

static void on_signal(int signum) {
    (void)signum;
    stopping = 1;
}

static void no_delay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void close_pair(struct pair *pair) {
    if (pair->closed)
        return;
    pair->closed = 1;
    /* close() removes the fds from the epoll set; the memory is freed after this batch of
     * events, which may still name the pair. */
    close(pair->client.fd);
    close(pair->backend.fd);
    pair->next_closed = closed_pairs;
    closed_pairs = pair;
}

static void free_closed(void) {
    while (closed_pairs != NULL) {
        struct pair *pair = closed_pairs;
        closed_pairs = pair->next_closed;
        free(pair->client.out);
        free(pair->backend.out);
        free(pair);
    }
}

/* Tell epoll what `e` waits for now: reading when its buffer is empty (and the relay is up),
 * writing when the other end's buffer holds bytes for it (or its connect is under way). */
static int update(struct end *e) {
    struct pair *pair = e->pair;
    unsigned want = 0;
    if (pair->connected && !e->eof && e->start == e->stop)
        want |= EPOLLIN;
    if (e->other->start != e->other->stop || (!pair->connected && e == &pair->backend))
        want |= EPOLLOUT;
    if (want == e->events)
        return 0;
    struct epoll_event event = {.events = want, .data.ptr = e};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, e->fd, &event) < 0)
        return -1;
    e->events = want;
    return 0;
}

/* Write what `from` read to the other socket; 0 when all is sent or the rest waits for
 * EPOLLOUT, -1 when the socket failed. */
static int flush(struct end *from) {
    while (from->start < from->stop) {
        ssize_t n = send(from->other->fd, from->out + from->start, from->stop - from->start,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        from->start += (size_t)n;
    }
    from->start = from->stop = 0;
    return 0;
}

/* Done with the pair once an end has closed and what it sent has been passed on. */
static int finished(struct pair *pair) {
    struct end *c = &pair->client, *b = &pair->backend;
    return (c->eof && c->start == c->stop) || (b->eof && b->start == b->stop);
}

static void readable(struct end *e) {
    ssize_t n;
    do {
        n = recv(e->fd, e->out, BUFFER_SIZE, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            close_pair(e->pair);
        return;
    }
    if (n == 0) {
        e->eof = 1;
        return;
    }
    e->start = 0;
    e->stop = (size_t)n;
    if (flush(e) < 0)
        close_pair(e->pair);
}

static void writable(struct end *e) {
    struct pair *pair = e->pair;
    if (!pair->connected) {
        /* e is the backend: its connect finished, or failed. */
        int error = 0;
        socklen_t size = sizeof error;
        if (getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &error, &size) < 0 || error != 0) {
            close_pair(pair);
            return;
        }
        pair->connected = 1;
    }
    if (flush(e->other) < 0)
        close_pair(pair);
}

static void handle(struct end *e, unsigned events) {
    struct pair *pair = e->pair;
    if (pair->closed)
        return;
    if (events & EPOLLERR) {
        close_pair(pair);
        return;
    }
    if (events & EPOLLOUT)
        writable(e);
    if (!pair->closed && (events & (EPOLLIN | EPOLLHUP))) {
        if (pair->connected && e->start == e->stop && !e->eof)
            readable(e);
        else if (!pair->connected)
            /* The client hung up before the backend answered. */
            close_pair(pair);
    }
    if (pair->closed)
        return;
    if (finished(pair) || update(&pair->client) < 0 || update(&pair->backend) < 0)
        close_pair(pair);
}

static void accept_all(int listener, const struct sockaddr_in *backend) {
    for (;;) {
        int client = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (client < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                perror("accept4");
            return;
        }
        int server = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct pair *pair = calloc(1, sizeof *pair);
        char *up = malloc(BUFFER_SIZE), *down = malloc(BUFFER_SIZE);
        if (server < 0 || pair == NULL || up == NULL || down == NULL) {
            perror("relay: a new connection");
            close(client);
            if (server >= 0)
                close(server);
            free(pair);
            free(up);
            free(down);
            continue;
        }
        no_delay(client);
        no_delay(server);
        pair->client = (struct end){.fd = client, .pair = pair, .other = &pair->backend, .out = up};
        pair->backend =
            (struct end){.fd = server, .pair = pair, .other = &pair->client, .out = down};
        if (connect(server, (const struct sockaddr *)backend, sizeof *backend) < 0 &&
            errno != EINPROGRESS) {
            close(client);
            close(server);
            free(up);
            free(down);
            free(pair);
            continue;
        }
        /* Until the connect completes: nothing on the client, EPOLLOUT on the backend. */
        struct epoll_event event = {.events = 0, .data.ptr = &pair->client};
        struct epoll_event event2 = {.events = EPOLLOUT, .data.ptr = &pair->backend};
        pair->backend.events = EPOLLOUT;
        if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, client, &event) < 0 ||
            epoll_ctl(epoll_fd, EPOLL_CTL_ADD, server, &event2) < 0) {
            perror("epoll_ctl");
            close_pair(pair);
        }
    }
}

int main(int argc, char **argv) {
    char *rest = NULL;
    long backend_port = argc == 2 ? strtol(argv[1], &rest, 10) : 0;
    if (argc != 2 || *rest != '\0' || backend_port <= 0 || backend_port > 65535) {
        fprintf(stderr, "usage: %s BACKEND_PORT\n", argv[0]);
        return 2;
    }
    struct sigaction action = {0};
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* SIGTERM and SIGINT are blocked but while epoll_pwait waits: one that comes while events
     * are handled interrupts the next wait instead of being missed. */
    sigset_t stops, waiting;
    sigemptyset(&stops);
    sigaddset(&stops, SIGTERM);
    sigaddset(&stops, SIGINT);
    sigprocmask(SIG_BLOCK, &stops, &waiting);
    sigdelset(&waiting, SIGTERM);
    sigdelset(&waiting, SIGINT);

    struct sockaddr_in backend = {.sin_family = AF_INET, .sin_port = htons((uint16_t)backend_port)};
    backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = 0};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof address;
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    /* The listening socket is the one whose data.ptr is NULL. */
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = NULL};
    if (listener < 0 || epoll_fd < 0 ||
        bind(listener, (struct sockaddr *)&address, sizeof address) < 0 ||
        listen(listener, 4096) < 0 ||
        getsockname(listener, (struct sockaddr *)&address, &size) < 0 ||
        epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &event) < 0) {
        perror("relay");
        return 1;
    }
    printf("{\"port\": %d}\n", ntohs(address.sin_port));
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    while (!stopping) {
        int count = epoll_pwait(epoll_fd, events, MAX_EVENTS, -1, &waiting);
        if (count < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_pwait");
            return 1;
        }
        for (int i = 0; i < count; i++) {
            if (events[i].data.ptr == NULL)
                accept_all(listener, &backend);
            else
                handle(events[i].data.ptr, events[i].events);
        }
        free_closed();
    }
    return 0;
}
