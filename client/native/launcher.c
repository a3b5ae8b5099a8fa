/*
 * dffmpeg-proxy's native launcher: hands the call to the local helper (client/helper.py)
 * over a Unix socket, with the caller's stdin, stdout and stderr, and becomes a stand-in
 * for the helper's child: signals it receives go to that child, and it exits with the
 * child's wait status (or dies of the child's signal). When no helper answers, it execs
 * the Python drop-in, which runs the call and starts a helper for the next ones.
 *
 * Built by scripts/install.sh:
 *   cc -O2 -DDFFMPEG_PYTHON='"/venv/bin/python"' -DDFFMPEG_HELPER_TAG='"tag"' launcher.c
 * The protocol and the socket's place are described in client/helper.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#ifndef DFFMPEG_PYTHON
#error "DFFMPEG_PYTHON must name the installation's python"
#endif
#ifndef DFFMPEG_HELPER_TAG
#error "DFFMPEG_HELPER_TAG must be client.helper.install_tag()"
#endif

extern char **environ;

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
static volatile pid_t child = 0;

/* The Python drop-in, with our arguments after -c CODE (client.proxy.launched). */
static void run_python(int argc, char **argv)
{
    char **args = calloc((size_t)argc + 4, sizeof(char *));
    if (args != NULL) {
        args[0] = DFFMPEG_PYTHON;
        args[1] = "-c";
        args[2] = "import sys; from client.proxy import launched; sys.exit(launched())";
        for (int i = 0; i < argc; i++)
            args[3 + i] = argv[i];
        execv(DFFMPEG_PYTHON, args);
    }
    dprintf(2, "dffmpeg: cannot run %s: %s\n", DFFMPEG_PYTHON, strerror(errno));
    _exit(207);
}

static void forward(int sig)
{
    if (child > 0)
        kill(child, sig);
}

/* The helper's socket, only in a directory that is ours alone. */
static int socket_address(struct sockaddr_un *addr)
{
    char dir[sizeof(addr->sun_path)];
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    int n;
    if (xdg != NULL && xdg[0] == '/')
        n = snprintf(dir, sizeof(dir), "%s/dffmpeg", xdg);
    else
        n = snprintf(dir, sizeof(dir), "/tmp/dffmpeg-%u", (unsigned)getuid());
    if (n < 0 || (size_t)n >= sizeof(dir))
        return -1;
    struct stat info;
    if (lstat(dir, &info) != 0 || !S_ISDIR(info.st_mode) || info.st_uid != getuid() ||
        (info.st_mode & 077) != 0)
        return -1;
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    n = snprintf(addr->sun_path, sizeof(addr->sun_path), "%s/helper-%s.sock", dir,
                 DFFMPEG_HELPER_TAG);
    return (n < 0 || (size_t)n >= sizeof(addr->sun_path)) ? -1 : 0;
}

/* Appends a NUL-terminated field; grows the buffer as needed. */
static int add_field(char **buf, size_t *len, size_t *cap, const char *field)
{
    size_t size = strlen(field) + 1;
    if (*len + size > *cap) {
        size_t grown = (*cap + size) * 2;
        char *more = realloc(*buf, grown);
        if (more == NULL)
            return -1;
        *buf = more;
        *cap = grown;
    }
    memcpy(*buf + *len, field, size);
    *len += size;
    return 0;
}

static char *build_request(int argc, char **argv, size_t *out_len)
{
    size_t cap = 4096, len = 8;
    char *buf = malloc(cap);
    char *cwd = getcwd(NULL, 0);
    char number[32];
    if (buf == NULL || cwd == NULL)
        goto fail;
    mode_t mask = umask(0);
    umask(mask);
    memcpy(buf, "DFH1", 4);
    if (add_field(&buf, &len, &cap, cwd) != 0)
        goto fail;
    snprintf(number, sizeof(number), "%o", (unsigned)mask);
    if (add_field(&buf, &len, &cap, number) != 0)
        goto fail;
    snprintf(number, sizeof(number), "%d", argc);
    if (add_field(&buf, &len, &cap, number) != 0)
        goto fail;
    for (int i = 0; i < argc; i++)
        if (add_field(&buf, &len, &cap, argv[i]) != 0)
            goto fail;
    for (char **e = environ; *e != NULL; e++)
        if (add_field(&buf, &len, &cap, *e) != 0)
            goto fail;
    uint32_t payload = (uint32_t)(len - 8);
    for (int i = 0; i < 4; i++)
        buf[4 + i] = (char)((payload >> (8 * i)) & 0xff);
    free(cwd);
    *out_len = len;
    return buf;
fail:
    free(cwd);
    free(buf);
    return NULL;
}

/* The first bytes carry our fds 0, 1 and 2 (SCM_RIGHTS); the rest follows. */
static int send_request(int sock, const char *buf, size_t len)
{
    int fds[3] = {0, 1, 2};
    char control[CMSG_SPACE(sizeof(fds))];
    memset(control, 0, sizeof(control));
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof(control)};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(cmsg), fds, sizeof(fds));
    ssize_t sent;
    do
        sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent <= 0)
        return -1;
    for (size_t done = (size_t)sent; done < len; done += (size_t)sent) {
        sent = send(sock, buf + done, len - done, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) {
            sent = 0;
            continue;
        }
        if (sent <= 0)
            return -1;
    }
    return 0;
}

/* 4 little-endian bytes; -1 when the helper closed first. */
static int read_int(int sock, int32_t *value)
{
    unsigned char bytes[4];
    size_t have = 0;
    while (have < sizeof(bytes)) {
        ssize_t n = recv(sock, bytes + have, sizeof(bytes) - have, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        have += (size_t)n;
    }
    *value = (int32_t)((uint32_t)bytes[0] | (uint32_t)bytes[1] << 8 |
                       (uint32_t)bytes[2] << 16 | (uint32_t)bytes[3] << 24);
    return 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_un addr;
    if (socket_address(&addr) != 0)
        run_python(argc, argv);
    /* A closed stdin, stdout or stderr cannot be passed on: the Python drop-in runs. */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0)
            run_python(argc, argv);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof(addr)) != 0)
        run_python(argc, argv);

    /* Signals wait until the child's pid is known, then go to it. */
    sigset_t block, previous;
    sigemptyset(&block);
    for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++)
        sigaddset(&block, forwarded[i]);
    sigprocmask(SIG_BLOCK, &block, &previous);

    size_t len = 0;
    char *request = build_request(argc, argv, &len);
    int32_t pid = 0;
    if (request == NULL || send_request(sock, request, len) != 0 || read_int(sock, &pid) != 0 ||
        pid <= 0) {
        /* Refused, or gone before a child started: nothing ran, the Python drop-in runs. */
        close(sock);
        sigprocmask(SIG_SETMASK, &previous, NULL);
        run_python(argc, argv);
    }
    free(request);
    child = pid;
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = forward;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++)
        sigaction(forwarded[i], &action, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigprocmask(SIG_SETMASK, &previous, NULL);

    int32_t status = 0;
    if (read_int(sock, &status) != 0) {
        dprintf(2, "dffmpeg: the local helper ended before the call did\n");
        return 204;
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        signal(sig, SIG_DFL);
        sigset_t only;
        sigemptyset(&only);
        sigaddset(&only, sig);
        sigprocmask(SIG_UNBLOCK, &only, NULL);
        raise(sig);
        return 128 + sig;
    }
    return 255;
}
