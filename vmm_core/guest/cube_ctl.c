/*
 * cube-ctl: the guest end of the host control channel (virtio-serial port "cube.ctl").
 *
 * One JSON object per line each way; a request carries "op" and "seq", the reply echoes "seq"
 * and says "ok". The ops on the restore path are answered here, in native code:
 *
 *   ping     {"uptime": seconds}
 *   sync     sets CLOCK_REALTIME from "realtime_ns", mixes "entropy" (base64) into the kernel
 *            RNG and forces a CRNG reseed; {"realtime_ns": now, "reseeded": bool}
 *   sync_fs  sync(2)
 *
 * Why not in cube-init (Python): under TCG every QEMU process translates the guest code it runs
 * afresh, and the first request after a restore made the Python init translate CPython's
 * interpreter paths: about 150 ms and ~10 MB of translation cache in every clone, on the path of
 * every sandbox create. This program's paths cost a few milliseconds.
 *
 * Any other op is forwarded, line for line, to cube-init over the socket it passes (--init-fd), and
 * cube-init's reply is relayed back: the service table stays with the process that owns it.
 *
 * The host end may be closed (no controller attached). The port then reports POLLHUP without
 * end, so instead of polling it we sleep until SIGIO, which the port raises when the host
 * connects or writes.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/random.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define PORT_NAME "cube.ctl"
#define MAX_LINE (1 << 20)
#define MAX_ENTROPY 512

static int port_fd = -1, port_out = -1; /* the same fd, except with --stdio */
static int init_fd = -1;    /* --init-fd N: cube-init's end of the forwarding socket */

static void logmsg(const char *fmt, ...)
{
	va_list ap;
	FILE *c = fopen("/dev/console", "w");
	if (!c)
		return;
	fputs("cube-ctl: ", c);
	va_start(ap, fmt);
	vfprintf(c, fmt, ap);
	va_end(ap);
	fputc('\n', c);
	fclose(c);
}

/* ---- a reader for the flat JSON objects the host sends ------------------------------------ */

struct field {
	const char *key; /* points into the line, not terminated */
	size_t key_len;
	const char *val; /* a string's contents (between the quotes), or a scalar's text */
	size_t val_len;
	int is_string;
};

#define MAX_FIELDS 16

static const char *skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
		p++;
	return p;
}

/* A string starting at the opening quote; returns the position after the closing quote. */
static const char *scan_string(const char *p, const char *end)
{
	for (p++; p < end; p++) {
		if (*p == '\\')
			p++;
		else if (*p == '"')
			return p + 1;
	}
	return NULL;
}

/* Any value: strings, scalars, and nested objects/arrays (skipped, never needed here). */
static const char *scan_value(const char *p, const char *end)
{
	if (p >= end)
		return NULL;
	if (*p == '"')
		return scan_string(p, end);
	if (*p == '{' || *p == '[') {
		int depth = 0;
		while (p < end) {
			if (*p == '"') {
				p = scan_string(p, end);
				if (!p)
					return NULL;
				continue;
			}
			if (*p == '{' || *p == '[')
				depth++;
			else if (*p == '}' || *p == ']') {
				if (--depth == 0)
					return p + 1;
			}
			p++;
		}
		return NULL;
	}
	while (p < end && *p != ',' && *p != '}' && *p != ' ' && *p != '\t')
		p++;
	return p;
}

/* Fills fields from a one-level object; returns their number, or -1 if the line is not one. */
static int parse_object(const char *p, const char *end, struct field *f, int max)
{
	int n = 0;
	p = skip_ws(p, end);
	if (p >= end || *p != '{')
		return -1;
	p = skip_ws(p + 1, end);
	if (p < end && *p == '}')
		return 0;
	for (;;) {
		const char *k, *v;
		if (p >= end || *p != '"')
			return -1;
		k = p;
		p = scan_string(p, end);
		if (!p)
			return -1;
		p = skip_ws(p, end);
		if (p >= end || *p != ':')
			return -1;
		p = skip_ws(p + 1, end);
		v = p;
		p = scan_value(p, end);
		if (!p)
			return -1;
		if (n < max) {
			f[n].key = k + 1;
			f[n].key_len = (size_t)(scan_string(k, end) - k) - 2;
			f[n].is_string = *v == '"';
			f[n].val = f[n].is_string ? v + 1 : v;
			f[n].val_len = (size_t)(p - v) - (f[n].is_string ? 2 : 0);
			n++;
		}
		p = skip_ws(p, end);
		if (p < end && *p == ',') {
			p = skip_ws(p + 1, end);
			continue;
		}
		if (p < end && *p == '}')
			return n;
		return -1;
	}
}

static const struct field *get(const struct field *f, int n, const char *key)
{
	size_t len = strlen(key);
	for (int i = 0; i < n; i++)
		if (f[i].key_len == len && memcmp(f[i].key, key, len) == 0)
			return &f[i];
	return NULL;
}

static int get_int64(const struct field *fl, int64_t *out)
{
	char buf[32];
	char *e;
	if (!fl || fl->is_string || fl->val_len == 0 || fl->val_len >= sizeof(buf))
		return -1;
	memcpy(buf, fl->val, fl->val_len);
	buf[fl->val_len] = 0;
	errno = 0;
	long long v = strtoll(buf, &e, 10);
	if (errno || *e)
		return -1;
	*out = v;
	return 0;
}

static int b64_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Standard base64 with padding; returns the decoded length or -1. */
static int b64_decode(const char *s, size_t len, unsigned char *out, size_t cap)
{
	size_t n = 0;
	uint32_t acc = 0;
	int bits = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '=')
			break;
		int v = b64_value(s[i]);
		if (v < 0)
			return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (n >= cap)
				return -1;
			out[n++] = (unsigned char)(acc >> bits);
		}
	}
	return (int)n;
}

/* ---- the ops ------------------------------------------------------------------------------ */

/* The request's seq as JSON text (a number, or null when absent or not a number). */
static void seq_text(const struct field *seq, char *buf, size_t cap)
{
	int64_t v;
	if (get_int64(seq, &v) == 0)
		snprintf(buf, cap, "%" PRId64, v);
	else
		snprintf(buf, cap, "null");
}

static int fail(char *out, size_t cap, const char *seq, const char *what, int err)
{
	/* Only fixed text and strerror() go in here: nothing that needs JSON escaping. */
	return snprintf(out, cap, "{\"seq\": %s, \"ok\": false, \"error\": \"%s: %s\"}\n", seq, what,
			strerror(err));
}

static int op_ping(char *out, size_t cap, const char *seq)
{
	double up = 0;
	FILE *f = fopen("/proc/uptime", "r");
	if (f) {
		if (fscanf(f, "%lf", &up) != 1)
			up = 0;
		fclose(f);
	}
	return snprintf(out, cap, "{\"seq\": %s, \"ok\": true, \"uptime\": %.2f}\n", seq, up);
}

static int op_sync(const struct field *f, int n, char *out, size_t cap, const char *seq)
{
	int64_t ns;
	int reseeded = 0;
	const struct field *rt = get(f, n, "realtime_ns");
	const struct field *ent = get(f, n, "entropy");

	if (rt) {
		struct timespec ts;
		if (get_int64(rt, &ns) != 0 || ns < 0)
			return fail(out, cap, seq, "realtime_ns", EINVAL);
		ts.tv_sec = (time_t)(ns / 1000000000);
		ts.tv_nsec = (long)(ns % 1000000000);
		if (clock_settime(CLOCK_REALTIME, &ts) != 0)
			return fail(out, cap, seq, "clock_settime", errno);
	}
	if (ent && ent->is_string && ent->val_len > 0) {
		struct {
			struct rand_pool_info info;
			unsigned char buf[MAX_ENTROPY];
		} req;
		int len = b64_decode(ent->val, ent->val_len, req.buf, sizeof(req.buf));
		if (len <= 0)
			return fail(out, cap, seq, "entropy", EINVAL);
		req.info.entropy_count = len * 8;
		req.info.buf_size = len;
		int rnd = open("/dev/random", O_WRONLY | O_CLOEXEC);
		if (rnd < 0)
			return fail(out, cap, seq, "/dev/random", errno);
		if (ioctl(rnd, RNDADDENTROPY, &req.info) != 0 || ioctl(rnd, RNDRESEEDCRNG) != 0) {
			int e = errno;
			close(rnd);
			return fail(out, cap, seq, "RNDADDENTROPY", e);
		}
		close(rnd);
		reseeded = 1;
	}
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	return snprintf(out, cap, "{\"seq\": %s, \"ok\": true, \"realtime_ns\": %" PRId64 ", \"reseeded\": %s}\n",
			seq, (int64_t)now.tv_sec * 1000000000 + now.tv_nsec, reseeded ? "true" : "false");
}

static int write_all(int fd, const char *buf, size_t len, int timeout_ms)
{
	while (len) {
		ssize_t w = write(fd, buf, len);
		if (w > 0) {
			buf += w;
			len -= (size_t)w;
			continue;
		}
		if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			struct pollfd p = {fd, POLLOUT, 0};
			int r = poll(&p, 1, timeout_ms);
			if (r == 0 || (r < 0 && errno != EINTR))
				return -1; /* timed out (a stale errno must not make that a retry) or failed */
			continue;
		}
		return -1;
	}
	return 0;
}

/* Hands the line to cube-init and waits for its one-line reply. */
static int forward(const char *line, size_t len, char *out, size_t cap, const char *seq)
{
	size_t got = 0;
	if (write_all(init_fd, line, len, 10000) != 0 || write_all(init_fd, "\n", 1, 10000) != 0)
		return fail(out, cap, seq, "forwarding to cube-init", errno ? errno : EPIPE);
	while (got < cap - 1) {
		struct pollfd p = {init_fd, POLLIN, 0};
		int r = poll(&p, 1, 30000);
		if (r == 0)
			return fail(out, cap, seq, "cube-init did not answer", ETIMEDOUT);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return fail(out, cap, seq, "cube-init", errno);
		}
		ssize_t n = read(init_fd, out + got, 1);
		if (n <= 0) {
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			return fail(out, cap, seq, "cube-init closed", EPIPE);
		}
		if (out[got++] == '\n')
			return (int)got;
	}
	return fail(out, cap, seq, "cube-init reply", EMSGSIZE);
}

static void handle(const char *line, size_t len)
{
	static char out[65536];
	struct field f[MAX_FIELDS];
	char seq[32];
	int n = parse_object(line, line + len, f, MAX_FIELDS);
	int r;

	if (n < 0) {
		r = snprintf(out, sizeof(out), "{\"ok\": false, \"error\": \"not a JSON object\"}\n");
	} else {
		const struct field *op = get(f, n, "op");
		seq_text(get(f, n, "seq"), seq, sizeof(seq));
		errno = 0;
		if (op && op->is_string && op->val_len == 4 && memcmp(op->val, "ping", 4) == 0)
			r = op_ping(out, sizeof(out), seq);
		else if (op && op->is_string && op->val_len == 4 && memcmp(op->val, "sync", 4) == 0)
			r = op_sync(f, n, out, sizeof(out), seq);
		else if (op && op->is_string && op->val_len == 7 && memcmp(op->val, "sync_fs", 7) == 0) {
			sync();
			r = snprintf(out, sizeof(out), "{\"seq\": %s, \"ok\": true}\n", seq);
		} else
			r = forward(line, len, out, sizeof(out), seq);
	}
	if (r > 0)
		write_all(port_out, out, (size_t)r < sizeof(out) ? (size_t)r : sizeof(out) - 1, 1000);
}

/* ---- the port ----------------------------------------------------------------------------- */

static int open_port(void)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *e;
	if (!d)
		return -1;
	while ((e = readdir(d))) {
		char path[512], name[64] = {0};
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t n = read(fd, name, sizeof(name) - 1);
		close(fd);
		if (n <= 0 || strncmp(name, PORT_NAME "\n", sizeof(PORT_NAME)) != 0)
			continue;
		snprintf(path, sizeof(path), "/dev/%s", e->d_name);
		closedir(d);
		fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0)
			return -1;
		fcntl(fd, F_SETOWN, getpid());
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC);
		return fd;
	}
	closedir(d);
	return -1;
}

int main(int argc, char **argv)
{
	static char buf[MAX_LINE];
	size_t used = 0;
	sigset_t io;

	/* SIGIO stays blocked: it is only ever collected by sigtimedwait() below. */
	sigemptyset(&io);
	sigaddset(&io, SIGIO);
	sigprocmask(SIG_BLOCK, &io, NULL);
	signal(SIGPIPE, SIG_IGN);

	int stdio = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--stdio") == 0)
			stdio = 1;
		else if (strcmp(argv[i], "--init-fd") == 0 && i + 1 < argc)
			init_fd = atoi(argv[++i]);
	}
	if (stdio) {
		/* The protocol on stdin/stdout, for the host's tests of this program. */
		port_fd = 0;
		port_out = 1;
		fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
	} else {
		for (int tries = 0; (port_fd = open_port()) < 0; tries++) {
			if (tries == 50) {
				logmsg("no virtio port named " PORT_NAME);
				return 1;
			}
			usleep(100000);
		}
		port_out = port_fd;
		logmsg("control channel ready");
	}

	for (;;) {
		struct pollfd p = {port_fd, POLLIN, 0};
		int hung_up = 0;
		if (poll(&p, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			logmsg("poll: %s", strerror(errno));
			return 1;
		}
		for (;;) {
			ssize_t n = read(port_fd, buf + used, sizeof(buf) - used);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
				/* With the host end closed the port reads as end-of-file and polls as readable. */
				hung_up = 1;
				break;
			}
			if (n < 0)
				break;
			used += (size_t)n;
			char *start = buf, *nl;
			while ((nl = memchr(start, '\n', used - (size_t)(start - buf)))) {
				if (nl > start)
					handle(start, (size_t)(nl - start));
				start = nl + 1;
			}
			used -= (size_t)(start - buf);
			memmove(buf, start, used);
			if (used == sizeof(buf)) {
				logmsg("request line over %d bytes dropped", MAX_LINE);
				used = 0;
			}
		}
		if (hung_up && port_fd == 0)
			return 0; /* --stdio: end of input */
		if (hung_up) {
			/* Sleep until the host connects or writes (SIGIO, kept pending while blocked, so one
			 * raised since the read is not lost); the timeout only guards against a lost signal. */
			struct timespec ts = {60, 0};
			used = 0;
			sigtimedwait(&io, NULL, &ts);
		}
	}
}
