/* Outbox: what the media socket sends, built in place and sent in as few syscalls as
 * the kernel allows.
 *
 * A datagram is built (by a lane, or copied from Python's bytes) straight into one of
 * the outbox's slots and protected there with libsrtp. While the outbox is held (the
 * mux drains what it received, or an engine tick runs) datagrams wait, up to `cap`;
 * then they leave together. Sending groups them by destination, keeping each
 * destination's order, and with UDP GSO hands each run of one destination's datagrams
 * to the kernel as one message (UDP_SEGMENT, the run's datagrams equal in size but the
 * last): the kernel routes and builds one packet for the run and cuts it at the
 * segment size. A keyframe of 20 packets fanned out to 80 subscribers is then 80
 * messages, not 1600 (bench/udp_send.py: on loopback 0.68 against 2.6 µs of sending
 * per datagram).
 * Messages leave by sendmmsg(2), BATCH at a time.
 *
 * The kernel may refuse GSO (no checksum offload on the route's device: EIO; a socket
 * without UDP checksums, or a segment over the path MTU: EINVAL; EOPNOTSUPP or
 * ENOPROTOOPT where the socket or kernel lacks it): that message's
 * datagrams are sent one by one, GSO is off for the outbox from then on, and
 * `gso_refused` says why. Without GSO the datagrams leave in the order they came.
 */
#include "_fastpath.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <structmember.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define CHUNK 64               /* slots per allocation: a slot never moves once handed out */
#define MAX_SLOTS 4096
#define GSO_MAX_SEGMENTS 64    /* UDP_MAX_SEGMENTS of the oldest kernels with GSO */
#define GSO_MAX_SEGMENT 1452   /* one Ethernet frame over IPv6: GSO never fragments */
#define GSO_MAX_BYTES 60000    /* one message under IP's 64 KiB */
#define CTRL_SIZE CMSG_SPACE(sizeof(uint16_t))

struct Outbox {
    PyObject_HEAD
    int fd;
    PyObject *account; /* callable(sent, bytes, protect_errors, send_errors, would_block) or None */
    char held;
    char gso;
    int cap;
    int count, slots;
    unsigned char *chunks[MAX_SLOTS / CHUNK];
    int *lens;
    struct sockaddr_storage *addrs;
    socklen_t *alens;
    /* sending's scratch, as many as slots (the hash table up to four times that) */
    int *next, *heads, *tails, *table, *msg_segs;
    struct mmsghdr *msgs;
    struct iovec *iovs;
    unsigned char *ctrl;
    /* what the next account call reports */
    Py_ssize_t sent, nbytes, protect_errors, send_errors, would_block;
    /* running totals */
    long long gso_messages, gso_datagrams;
    int gso_refused;
};

static unsigned char *slot_at(Outbox *o, int i) { return o->chunks[i / CHUNK] + (size_t)(i % CHUNK) * SLOT; }

static int grow(Outbox *o)
{
    int want = o->slots + CHUNK;
    unsigned char *chunk = PyMem_RawMalloc((size_t)CHUNK * SLOT);
    if (chunk == NULL) {
        PyErr_NoMemory();
        return -1;
    }
#define GROW(field, n)                                                                   \
    do {                                                                                 \
        void *p = PyMem_RawRealloc(o->field, sizeof(*o->field) * (size_t)(n));           \
        if (p == NULL) {                                                                 \
            PyMem_RawFree(chunk);                                                        \
            PyErr_NoMemory();                                                            \
            return -1;                                                                   \
        }                                                                                \
        o->field = p;                                                                    \
    } while (0)
    GROW(lens, want);
    GROW(addrs, want);
    GROW(alens, want);
    GROW(next, want);
    GROW(heads, want);
    GROW(tails, want);
    GROW(table, 4 * want); /* the power of two at or above 2n */
    GROW(msg_segs, want);
    GROW(msgs, want);
    GROW(iovs, want);
    GROW(ctrl, (size_t)want * CTRL_SIZE);
#undef GROW
    o->chunks[o->slots / CHUNK] = chunk;
    o->slots = want;
    return 0;
}

/* FNV-1a over the address: sockaddrs are zeroed before they are filled, so the bytes
 * up to alen say everything. */
static unsigned hash_addr(const struct sockaddr_storage *a, socklen_t len)
{
    const unsigned char *p = (const unsigned char *)a;
    unsigned h = 2166136261u;
    for (socklen_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static int same_addr(Outbox *o, int i, int j)
{
    return o->alens[i] == o->alens[j] && memcmp(&o->addrs[i], &o->addrs[j], o->alens[i]) == 0;
}

/* Message m: to datagram `first`'s address, its run in iovs[v..v+segs). */
static void put_message(Outbox *o, int m, int first, int v, int segs)
{
    struct msghdr *h = &o->msgs[m].msg_hdr;
    memset(&o->msgs[m], 0, sizeof(o->msgs[m]));
    h->msg_name = &o->addrs[first];
    h->msg_namelen = o->alens[first];
    h->msg_iov = &o->iovs[v];
    h->msg_iovlen = (size_t)segs;
    o->msg_segs[m] = segs;
    if (segs > 1) {
        unsigned char *ctrl = o->ctrl + (size_t)m * CTRL_SIZE;
        memset(ctrl, 0, CTRL_SIZE);
        h->msg_control = ctrl;
        h->msg_controllen = CTRL_SIZE;
        struct cmsghdr *c = CMSG_FIRSTHDR(h);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t size = (uint16_t)o->iovs[v].iov_len;
        memcpy(CMSG_DATA(c), &size, sizeof(size));
    }
}

/* iovs[v] is datagram i. */
static void put_iov(Outbox *o, int v, int i)
{
    o->iovs[v].iov_base = slot_at(o, i);
    o->iovs[v].iov_len = (size_t)o->lens[i];
}

/* Messages for datagrams [0, n): one per datagram, or (GSO) one per run of a
 * destination's datagrams. The iovecs are written in send order, so a message's run
 * is contiguous. Returns how many messages. */
static int build_messages(Outbox *o, int n)
{
    if (!o->gso || n == 1) {
        for (int i = 0; i < n; i++) {
            put_iov(o, i, i);
            put_message(o, i, i, i, 1);
        }
        return n;
    }
    /* Group by destination, in order of first appearance, each group in order. */
    unsigned mask = 1;
    while (mask < (unsigned)(2 * n))
        mask <<= 1;
    mask -= 1;
    for (unsigned t = 0; t <= mask; t++)
        o->table[t] = -1;
    int groups = 0;
    for (int i = 0; i < n; i++) {
        o->next[i] = -1;
        unsigned t = hash_addr(&o->addrs[i], o->alens[i]) & mask;
        while (o->table[t] >= 0 && !same_addr(o, o->heads[o->table[t]], i))
            t = (t + 1) & mask;
        int g = o->table[t];
        if (g < 0) {
            g = groups++;
            o->table[t] = g;
            o->heads[g] = o->tails[g] = i;
        } else {
            o->next[o->tails[g]] = i;
            o->tails[g] = i;
        }
    }
    int m = 0, v = 0;
    for (int g = 0; g < groups; g++) {
        int i = o->heads[g];
        while (i >= 0) {
            int first = i, size = o->lens[i], segs = 1, total = size, v0 = v;
            put_iov(o, v++, i);
            i = o->next[i];
            if (size <= GSO_MAX_SEGMENT) {
                while (i >= 0 && segs < GSO_MAX_SEGMENTS && o->lens[i] <= size && total + o->lens[i] <= GSO_MAX_BYTES) {
                    int shorter = o->lens[i] < size;
                    put_iov(o, v++, i);
                    segs++;
                    total += o->lens[i];
                    i = o->next[i];
                    if (shorter) /* only the last segment may be shorter */
                        break;
                }
            }
            put_message(o, m++, first, v0, segs);
        }
    }
    return m;
}

/* Send message k's datagrams one by one (the kernel refused them as one). */
static void send_singly(Outbox *o, int k)
{
    struct msghdr *h = &o->msgs[k].msg_hdr;
    for (size_t s = 0; s < h->msg_iovlen; s++) {
        struct msghdr one;
        memset(&one, 0, sizeof(one));
        one.msg_name = h->msg_name;
        one.msg_namelen = h->msg_namelen;
        one.msg_iov = &h->msg_iov[s];
        one.msg_iovlen = 1;
        ssize_t r;
        do {
            r = sendmsg(o->fd, &one, 0);
        } while (r < 0 && errno == EINTR);
        if (r >= 0)
            o->sent++;
        else if (errno == EAGAIN || errno == EWOULDBLOCK)
            o->would_block++;
        else
            o->send_errors++;
    }
}

/* Send every waiting datagram. */
static void send_waiting(Outbox *o)
{
    int n = o->count;
    if (n == 0)
        return;
    o->count = 0;
    int m = build_messages(o, n);
    int done = 0;
    while (done < m) {
        int chunk = m - done < BATCH ? m - done : BATCH;
        int r = sendmmsg(o->fd, o->msgs + done, (unsigned int)chunk, 0);
        if (r > 0) {
            for (int k = done; k < done + r; k++) {
                o->sent += o->msg_segs[k];
                if (o->msg_segs[k] > 1) {
                    o->gso_messages++;
                    o->gso_datagrams += o->msg_segs[k];
                }
            }
            done += r;
            continue;
        }
        if (r == 0) { /* not seen; never loop on it */
            for (int k = done; k < m; k++)
                o->send_errors += o->msg_segs[k];
            break;
        }
        if (errno == EINTR)
            continue;
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK) {
            for (int k = done; k < m; k++)
                o->would_block += o->msg_segs[k];
            break;
        }
        if (o->msg_segs[done] > 1) {
            if (err == EIO || err == EINVAL || err == EOPNOTSUPP || err == ENOPROTOOPT) {
                o->gso = 0;
                o->gso_refused = err;
            }
            send_singly(o, done);
        } else {
            o->send_errors++; /* this datagram fails; go on with the rest */
        }
        done++;
    }
}

/* Tell the account what was sent since it was last told. -1 on a Python error. */
static int tell_account(Outbox *o)
{
    if (o->account == NULL || o->account == Py_None)
        return 0;
    if (!(o->sent || o->nbytes || o->protect_errors || o->send_errors || o->would_block))
        return 0;
    PyObject *r = PyObject_CallFunction(o->account, "nnnnn", o->sent, o->nbytes, o->protect_errors, o->send_errors,
                                        o->would_block);
    o->sent = o->nbytes = o->protect_errors = o->send_errors = o->would_block = 0;
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

unsigned char *outbox_slot(Outbox *o)
{
    if (o->count == MAX_SLOTS)
        send_waiting(o);
    if (o->count == o->slots && grow(o) < 0)
        return NULL;
    return slot_at(o, o->count);
}

void outbox_commit(Outbox *o, unsigned char *buf, int len, const struct sockaddr_storage *addr, socklen_t alen,
                   uintptr_t srtp, int early)
{
    o->nbytes += len;
    if (srtp != 0 && (fp_protect == NULL || fp_protect((void *)srtp, buf, &len) != 0)) {
        o->protect_errors++;
        return;
    }
    int c = o->count++;
    o->lens[c] = len;
    memcpy(&o->addrs[c], addr, alen);
    o->alens[c] = alen;
    if (o->count >= (o->held ? o->cap : early))
        send_waiting(o);
}

int outbox_settle(Outbox *o)
{
    if (o->held)
        return 0;
    send_waiting(o);
    return tell_account(o);
}

/* ---- the Python type ------------------------------------------------------------------ */

static int Outbox_init(Outbox *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "account", NULL};
    int fd;
    PyObject *account = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|O", kwlist, &fd, &account))
        return -1;
    if (account != Py_None && !PyCallable_Check(account)) {
        PyErr_SetString(PyExc_TypeError, "account must be callable or None");
        return -1;
    }
    self->fd = fd;
    Py_INCREF(account);
    Py_XSETREF(self->account, account);
    self->cap = 512;
    self->gso = 1;
    return 0;
}

static int Outbox_traverse(Outbox *self, visitproc visit, void *arg)
{
    Py_VISIT(self->account);
    return 0;
}

static int Outbox_clear(Outbox *self)
{
    Py_CLEAR(self->account);
    return 0;
}

static void Outbox_dealloc(Outbox *self)
{
    PyObject_GC_UnTrack(self);
    Outbox_clear(self);
    for (int c = 0; c < self->slots / CHUNK; c++)
        PyMem_RawFree(self->chunks[c]);
    PyMem_RawFree(self->lens);
    PyMem_RawFree(self->addrs);
    PyMem_RawFree(self->alens);
    PyMem_RawFree(self->next);
    PyMem_RawFree(self->heads);
    PyMem_RawFree(self->tails);
    PyMem_RawFree(self->table);
    PyMem_RawFree(self->msg_segs);
    PyMem_RawFree(self->msgs);
    PyMem_RawFree(self->iovs);
    PyMem_RawFree(self->ctrl);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* add(data, host, port, srtp, seq_at, seq): data copied into a slot; with srtp (a
 * srtp_t address, 0: sent as it is) the 16-bit seq is stamped at seq_at (> 0) and the
 * copy protected. */
static PyObject *Outbox_add(Outbox *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "add(data, host, port, srtp, seq_at, seq)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *host = PyUnicode_AsUTF8(args[1]);
    long port = PyLong_AsLong(args[2]);
    unsigned long long srtp = PyLong_AsUnsignedLongLong(args[3]);
    long seq_at = PyLong_AsLong(args[4]);
    long seq = PyLong_AsLong(args[5]);
    if (host == NULL || PyErr_Occurred()) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t size = view.len;
    if (size > SLOT - TRAILER) {
        PyBuffer_Release(&view);
        self->nbytes += size;
        self->protect_errors++;
        Py_RETURN_NONE;
    }
    struct sockaddr_storage addr;
    socklen_t alen;
    if (fp_fill_addr(host, (int)port, &addr, &alen) != 0) {
        PyBuffer_Release(&view);
        self->send_errors++;
        Py_RETURN_NONE;
    }
    unsigned char *buf = outbox_slot(self);
    if (buf == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    memcpy(buf, view.buf, (size_t)size);
    PyBuffer_Release(&view);
    if (srtp != 0 && seq_at > 0 && seq_at + 2 <= size) {
        buf[seq_at] = (unsigned char)((seq >> 8) & 0xFF);
        buf[seq_at + 1] = (unsigned char)(seq & 0xFF);
    }
    outbox_commit(self, buf, (int)size, &addr, alen, (uintptr_t)srtp, self->cap);
    Py_RETURN_NONE;
}

static PyObject *Outbox_flush(Outbox *self, PyObject *Py_UNUSED(ignored))
{
    send_waiting(self);
    if (tell_account(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Outbox_get_pending(Outbox *self, void *c) { return PyLong_FromLong(self->count); }

static int Outbox_set_cap(Outbox *self, PyObject *value, void *c)
{
    long cap = value ? PyLong_AsLong(value) : -1;
    if (cap == -1 && PyErr_Occurred())
        return -1;
    if (cap < 1 || cap > MAX_SLOTS) {
        PyErr_Format(PyExc_ValueError, "cap must be 1..%d", MAX_SLOTS);
        return -1;
    }
    self->cap = (int)cap;
    return 0;
}

static PyObject *Outbox_get_cap(Outbox *self, void *c) { return PyLong_FromLong(self->cap); }

static PyMethodDef Outbox_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Outbox_add, METH_FASTCALL,
     "add(data, host, port, srtp, seq_at, seq): queue a datagram (protected with srtp unless 0)"},
    {"flush", (PyCFunction)Outbox_flush, METH_NOARGS, "send what waits and tell the account"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Outbox_getset[] = {
    {"pending", (getter)Outbox_get_pending, NULL, "datagrams waiting", NULL},
    {"cap", (getter)Outbox_get_cap, (setter)Outbox_set_cap, "held: send once this many datagrams wait", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Outbox_members[] = {
    {"fd", T_INT, offsetof(Outbox, fd), 0, "the socket sent on (-1 once it is closed)"},
    {"held", T_BOOL, offsetof(Outbox, held), 0, "datagrams wait for flush() (or the cap)"},
    {"gso", T_BOOL, offsetof(Outbox, gso), 0, "a run of datagrams to one peer leaves as one UDP GSO message"},
    {"gso_refused", T_INT, offsetof(Outbox, gso_refused), READONLY, "errno the kernel refused GSO with (0: never)"},
    {"gso_messages", T_LONGLONG, offsetof(Outbox, gso_messages), READONLY, "GSO messages sent"},
    {"gso_datagrams", T_LONGLONG, offsetof(Outbox, gso_datagrams), READONLY, "datagrams those messages carried"},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject OutboxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media.transport._fastpath.Outbox",
    .tp_basicsize = sizeof(Outbox),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Outbox(fd, account=None): the media socket's outgoing datagrams, sent by sendmmsg and UDP GSO.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Outbox_init,
    .tp_dealloc = (destructor)Outbox_dealloc,
    .tp_traverse = (traverseproc)Outbox_traverse,
    .tp_clear = (inquiry)Outbox_clear,
    .tp_methods = Outbox_methods,
    .tp_getset = Outbox_getset,
    .tp_members = Outbox_members,
};
