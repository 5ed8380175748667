/* Video lanes: a video packet's fan-out to its subscribers in one call.
 *
 * Forwarding one packet to N subscribers ran N times through DownTrack.write_video,
 * the layer selector, the stream rewriter, the RTX ring, the send counters and the
 * transport: ten Python calls per packet and subscriber, ~half of the forward path.
 * A VideoLane is one video DownTrack's steady state seen from C: the same objects
 * (the selector's, rewriter's and counters' fields live in the C base classes below,
 * which the Python classes extend), so there is one copy of every value and nothing
 * to keep in sync. fan_out_video walks a track's lanes for one packet: it drops what
 * the selector would drop, and forwards what it would forward (seq/timestamp/picture
 * id continuity, the RTX ring, the counters, SRTP, sendmmsg). Every packet that needs
 * a decision (a layer start or switch, a keyframe, a subscriber that is paced or not
 * connected) is left to the Python path: its lane's index is returned, untouched.
 *
 * Paced subscribers (transport-cc) get their packet built here and handed back: the
 * pacer, the transport-wide seq, the send history and the probe packet stay Python's.
 */
#include "_fastpath.h"

#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <string.h>

/* ---- SelectorState: LayerSelector's per-packet fields ---------------------------- */
typedef struct {
    PyObject_HEAD
    char blocked;
    int current; /* -1: None */
    int target;
    int allocated;
    long long switch_ext_seq;
} SelectorState;

static PyObject *optional_int(long long value) { return value < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(value); }

static int set_optional_int(PyObject *value, long long *out, const char *name)
{
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "cannot delete %s", name);
        return -1;
    }
    if (value == Py_None) {
        *out = -1;
        return 0;
    }
    long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be >= 0 or None", name);
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *Selector_get_current(SelectorState *self, void *c) { return optional_int(self->current); }

static int Selector_set_current(SelectorState *self, PyObject *value, void *c)
{
    long long v;
    if (set_optional_int(value, &v, "current") < 0)
        return -1;
    if (v > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "layer index too large");
        return -1;
    }
    self->current = (int)v;
    return 0;
}

static PyGetSetDef Selector_getset[] = {
    {"current", (getter)Selector_get_current, (setter)Selector_set_current, "layer being forwarded (None: none)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Selector_members[] = {
    {"blocked", T_BOOL, offsetof(SelectorState, blocked), 0, "every packet is dropped"},
    {"target", T_INT, offsetof(SelectorState, target), 0, "layer to forward"},
    {"allocated", T_INT, offsetof(SelectorState, allocated), 0, "the allocator's layer"},
    {"switch_ext_seq", T_LONGLONG, offsetof(SelectorState, switch_ext_seq), 0, "first seq of the current layer"},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *Selector_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    SelectorState *self = (SelectorState *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->current = -1;
    return (PyObject *)self;
}

static PyTypeObject SelectorStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media.transport._fastpath.SelectorState",
    .tp_basicsize = sizeof(SelectorState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The fields of LayerSelector that each packet's verdict reads (base class).",
    .tp_new = Selector_new,
    .tp_members = Selector_members,
    .tp_getset = Selector_getset,
};

/* ---- RewriterState: StreamRewriter's fields --------------------------------------- */
typedef struct {
    PyObject_HEAD
    int clock_rate;
    long long seq_offset, ts_offset, pid_offset, tl0_offset;
    long long last_ext_seq, last_ts;
    double last_ms;
    char has_last_ms;
    long long last_pid, last_tl0; /* -1: None */
    long long rtx_seq;
} RewriterState;

static PyObject *Rewriter_get_last_ms(RewriterState *self, void *c)
{
    return self->has_last_ms ? PyFloat_FromDouble(self->last_ms) : Py_NewRef(Py_None);
}

static int Rewriter_set_last_ms(RewriterState *self, PyObject *value, void *c)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete last_ms");
        return -1;
    }
    if (value == Py_None) {
        self->has_last_ms = 0;
        return 0;
    }
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    self->last_ms = v;
    self->has_last_ms = 1;
    return 0;
}

static PyObject *Rewriter_get_last_pid(RewriterState *self, void *c) { return optional_int(self->last_pid); }
static int Rewriter_set_last_pid(RewriterState *self, PyObject *v, void *c) { return set_optional_int(v, &self->last_pid, "last_pid"); }
static PyObject *Rewriter_get_last_tl0(RewriterState *self, void *c) { return optional_int(self->last_tl0); }
static int Rewriter_set_last_tl0(RewriterState *self, PyObject *v, void *c) { return set_optional_int(v, &self->last_tl0, "last_tl0"); }

static PyGetSetDef Rewriter_getset[] = {
    {"last_ms", (getter)Rewriter_get_last_ms, (setter)Rewriter_set_last_ms, "when the last packet went out (None: none yet)", NULL},
    {"last_pid", (getter)Rewriter_get_last_pid, (setter)Rewriter_set_last_pid, "last picture id out (None: none)", NULL},
    {"last_tl0", (getter)Rewriter_get_last_tl0, (setter)Rewriter_set_last_tl0, "last TL0PICIDX out (None: none)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Rewriter_members[] = {
    {"clock_rate", T_INT, offsetof(RewriterState, clock_rate), 0, NULL},
    {"seq_offset", T_LONGLONG, offsetof(RewriterState, seq_offset), 0, NULL},
    {"ts_offset", T_LONGLONG, offsetof(RewriterState, ts_offset), 0, NULL},
    {"pid_offset", T_LONGLONG, offsetof(RewriterState, pid_offset), 0, NULL},
    {"tl0_offset", T_LONGLONG, offsetof(RewriterState, tl0_offset), 0, NULL},
    {"last_ext_seq", T_LONGLONG, offsetof(RewriterState, last_ext_seq), 0, NULL},
    {"last_ts", T_LONGLONG, offsetof(RewriterState, last_ts), 0, NULL},
    {"rtx_seq", T_LONGLONG, offsetof(RewriterState, rtx_seq), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *Rewriter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    RewriterState *self = (RewriterState *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->last_pid = self->last_tl0 = -1;
    return (PyObject *)self;
}

static PyTypeObject RewriterStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media.transport._fastpath.RewriterState",
    .tp_basicsize = sizeof(RewriterState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The fields of StreamRewriter (base class).",
    .tp_new = Rewriter_new,
    .tp_members = Rewriter_members,
    .tp_getset = Rewriter_getset,
};

/* ---- SendCounters: RtpStreamSend's send-side counters ------------------------------ */
typedef struct {
    PyObject_HEAD
    long long packets_sent, bytes_sent;
    long long last_rtp_ts; /* -1: None */
    double last_sent_ms;
    PyObject *mark;
} SendCounters;

static PyObject *Counters_get_last_rtp_ts(SendCounters *self, void *c) { return optional_int(self->last_rtp_ts); }
static int Counters_set_last_rtp_ts(SendCounters *self, PyObject *v, void *c)
{
    return set_optional_int(v, &self->last_rtp_ts, "_last_rtp_ts");
}

static PyGetSetDef Counters_getset[] = {
    {"_last_rtp_ts", (getter)Counters_get_last_rtp_ts, (setter)Counters_set_last_rtp_ts, "timestamp of the last packet sent", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Counters_members[] = {
    {"packets_sent", T_LONGLONG, offsetof(SendCounters, packets_sent), 0, NULL},
    {"bytes_sent", T_LONGLONG, offsetof(SendCounters, bytes_sent), 0, NULL},
    {"_last_sent_ms", T_DOUBLE, offsetof(SendCounters, last_sent_ms), 0, NULL},
    {"_mark", T_OBJECT, offsetof(SendCounters, mark), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *Counters_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    SendCounters *self = (SendCounters *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->last_rtp_ts = -1;
    return (PyObject *)self;
}

static void Counters_dealloc(SendCounters *self)
{
    Py_CLEAR(self->mark); /* a tuple of numbers: no cycle through it */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject SendCountersType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media.transport._fastpath.SendCounters",
    .tp_basicsize = sizeof(SendCounters),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The counters of RtpStreamSend that each sent packet moves (base class).",
    .tp_new = Counters_new,
    .tp_dealloc = (destructor)Counters_dealloc,
    .tp_members = Counters_members,
    .tp_getset = Counters_getset,
};

/* ---- SendTarget: where a subscriber transport's packets go ------------------------- */
typedef struct {
    PyObject_HEAD
    char ready;
    char python_path;
    char paced;
    int fd;
    struct sockaddr_storage addr;
    socklen_t alen;
    uintptr_t srtp;
    PyObject *account; /* callable(sent, bytes, protect_errors, send_errors, would_block) */
} SendTarget;

static PyObject *Target_set(SendTarget *self, PyObject *args)
{
    int fd, port;
    const char *host;
    unsigned long long srtp;
    PyObject *account;
    if (!PyArg_ParseTuple(args, "isiKO", &fd, &host, &port, &srtp, &account))
        return NULL;
    if (!PyCallable_Check(account)) {
        PyErr_SetString(PyExc_TypeError, "account must be callable");
        return NULL;
    }
    if (srtp == 0 || fd < 0) {
        PyErr_SetString(PyExc_ValueError, "a target needs a socket and an SRTP session");
        return NULL;
    }
    if (fp_fill_addr(host, port, &self->addr, &self->alen) != 0) {
        PyErr_Format(PyExc_ValueError, "not a numeric address: %s", host);
        return NULL;
    }
    self->fd = fd;
    self->srtp = (uintptr_t)srtp;
    Py_INCREF(account);
    Py_XSETREF(self->account, account);
    self->ready = 1;
    Py_RETURN_NONE;
}

static PyObject *Target_clear_method(SendTarget *self, PyObject *Py_UNUSED(ignored))
{
    self->ready = 0;
    self->srtp = 0;
    Py_CLEAR(self->account);
    Py_RETURN_NONE;
}

static int Target_traverse(SendTarget *self, visitproc visit, void *arg)
{
    Py_VISIT(self->account);
    return 0;
}

static int Target_clear(SendTarget *self)
{
    Py_CLEAR(self->account);
    self->ready = 0;
    return 0;
}

static void Target_dealloc(SendTarget *self)
{
    PyObject_GC_UnTrack(self);
    Target_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Target_methods[] = {
    {"set", (PyCFunction)Target_set, METH_VARARGS,
     "set(fd, host, port, srtp_address, account): packets go to host:port on fd, protected with that session"},
    {"clear", (PyCFunction)Target_clear_method, METH_NOARGS, "nowhere to send: every lane falls back"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Target_members[] = {
    {"ready", T_BOOL, offsetof(SendTarget, ready), READONLY, "a socket, an address and an SRTP session are set"},
    {"python_path", T_BOOL, offsetof(SendTarget, python_path), 0, "every packet takes the Python path (a test's tap on send_rtp)"},
    {"paced", T_BOOL, offsetof(SendTarget, paced), 0, "packets are built in C and handed to Python's pacer"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SendTargetType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media.transport._fastpath.SendTarget",
    .tp_basicsize = sizeof(SendTarget),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A subscriber transport's destination and SRTP session, as the lanes send to it.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)Target_dealloc,
    .tp_traverse = (traverseproc)Target_traverse,
    .tp_clear = (inquiry)Target_clear,
    .tp_methods = Target_methods,
    .tp_members = Target_members,
};

/* ---- VideoLane ---------------------------------------------------------------------- */
#define MAX_EXT 16

typedef struct {
    PyObject_HEAD
    PyObject *selector; /* SelectorState */
    PyObject *rewriter; /* RewriterState */
    PyObject *counters; /* SendCounters */
    PyObject *ring;     /* RtxRing */
    PyObject *target;   /* SendTarget */
    unsigned char first_byte;
    unsigned char payload_type;
    uint32_t ssrc;
    unsigned char ext[MAX_EXT];
    int ext_len;
} VideoLane;

static int Lane_init(VideoLane *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"selector", "rewriter", "counters", "ring", "target", "first_byte", "payload_type", "ssrc",
                             "extensions", NULL};
    PyObject *selector, *rewriter, *counters, *ring, *target;
    int first_byte, payload_type;
    unsigned long ssrc;
    Py_buffer ext;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!O!iiky*", kwlist, &SelectorStateType, &selector,
                                     &RewriterStateType, &rewriter, &SendCountersType, &counters, &RtxRingType, &ring,
                                     &SendTargetType, &target, &first_byte, &payload_type, &ssrc, &ext))
        return -1;
    if (ext.len > MAX_EXT || ext.len % 4 != 0) {
        PyBuffer_Release(&ext);
        PyErr_SetString(PyExc_ValueError, "extensions: a block of up to 16 bytes, a multiple of 4");
        return -1;
    }
    memcpy(self->ext, ext.buf, (size_t)ext.len);
    self->ext_len = (int)ext.len;
    PyBuffer_Release(&ext);
    Py_INCREF(selector);
    Py_XSETREF(self->selector, selector);
    Py_INCREF(rewriter);
    Py_XSETREF(self->rewriter, rewriter);
    Py_INCREF(counters);
    Py_XSETREF(self->counters, counters);
    Py_INCREF(ring);
    Py_XSETREF(self->ring, ring);
    Py_INCREF(target);
    Py_XSETREF(self->target, target);
    self->first_byte = (unsigned char)first_byte;
    self->payload_type = (unsigned char)(payload_type & 0x7F);
    self->ssrc = (uint32_t)ssrc;
    return 0;
}

static int Lane_traverse(VideoLane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->selector);
    Py_VISIT(self->rewriter);
    Py_VISIT(self->counters);
    Py_VISIT(self->ring);
    Py_VISIT(self->target);
    return 0;
}

static int Lane_clear(VideoLane *self)
{
    Py_CLEAR(self->selector);
    Py_CLEAR(self->rewriter);
    Py_CLEAR(self->counters);
    Py_CLEAR(self->ring);
    Py_CLEAR(self->target);
    return 0;
}

static void Lane_dealloc(VideoLane *self)
{
    PyObject_GC_UnTrack(self);
    Lane_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject VideoLaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media.transport._fastpath.VideoLane",
    .tp_basicsize = sizeof(VideoLane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One video DownTrack's steady state, forwarded from C by fan_out_video.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
};

/* ---- fan_out_video ------------------------------------------------------------------ */

/* What one batch being filled is for: the socket, and whom to tell what it cost. */
typedef struct {
    int fd;
    PyObject *account; /* borrowed from a target for the batch's lifetime */
    int count;
    Py_ssize_t sent, nbytes, protect_errors, send_errors, would_block;
} Pending;

/* Send what is pending; with `settle`, tell its account and reset. -1 on a Python error. */
static int pending_flush(Pending *p, int settle)
{
    if (p->count) {
        p->sent += fp_flush(p->fd, p->count, &p->send_errors, &p->would_block);
        p->count = 0;
    }
    if (!settle || p->account == NULL)
        return 0;
    PyObject *r = PyObject_CallFunction(p->account, "nnnnn", p->sent, p->nbytes, p->protect_errors, p->send_errors,
                                        p->would_block);
    p->account = NULL;
    p->sent = p->nbytes = p->protect_errors = p->send_errors = p->would_block = 0;
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* fan_out_video(lanes, index, payload, timestamp, marker, ext_seq, keyframe, start,
 *               picture_id, picture_id_bits, tl0picidx, descriptor_size, now_ms, early)
 *   -> (forwarded, forwarded_bytes, fallback, handoff)
 *
 * lanes: list of VideoLane or None, in the order of the track's DownTracks. payload:
 * the packet's payload (a buffer; kept by the RTX rings, sliced after the descriptor
 * when a lane rewrites it). picture_id / tl0picidx: -1 when the descriptor has none.
 * early: send once this many datagrams are built (the first subscribers need not wait
 * for the last ones). fallback: indexes of the lanes the Python path must handle
 * (None when there are none); forwarded / forwarded_bytes: packets sent from here and
 * their size before SRTP, as DownTrack.write_video counts them. handoff: for paced
 * subscribers, [index, packet, index, packet, ...] (None when there are none): built,
 * cached and counted here, sent by DownTrack.send_built through the pacer. */
PyObject *fan_out_video(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "fan_out_video takes 14 arguments");
        return NULL;
    }
    PyObject *lanes = args[0];
    if (!PyList_Check(lanes)) {
        PyErr_SetString(PyExc_TypeError, "lanes must be a list");
        return NULL;
    }
    long index = PyLong_AsLong(args[1]);
    PyObject *payload_obj = args[2];
    long long timestamp = PyLong_AsLongLong(args[3]);
    int marker = PyObject_IsTrue(args[4]);
    long long ext_seq = PyLong_AsLongLong(args[5]);
    int keyframe = PyObject_IsTrue(args[6]);
    int start = PyObject_IsTrue(args[7]);
    long long pid = PyLong_AsLongLong(args[8]);
    long pid_bits = PyLong_AsLong(args[9]);
    long long tl0 = PyLong_AsLongLong(args[10]);
    Py_ssize_t desc_size = PyLong_AsSsize_t(args[11]);
    double now_ms = PyFloat_AsDouble(args[12]);
    long early = PyLong_AsLong(args[13]);
    if (PyErr_Occurred() || marker < 0 || keyframe < 0 || start < 0)
        return NULL;
    if (early < 1 || early > BATCH)
        early = BATCH;
    if (pid >= 0 && pid_bits != 7 && pid_bits != 15) {
        PyErr_SetString(PyExc_ValueError, "picture_id_bits must be 7 or 15");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(payload_obj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *payload = view.buf;
    Py_ssize_t payload_len = view.len;
    /* Where the descriptor's picture id and TL0PICIDX sit (a rewrite keeps widths). */
    Py_ssize_t pid_at = 2, tl0_at = pid >= 0 ? 2 + (pid_bits + 1) / 8 : -1;
    if (pid >= 0 && (desc_size < tl0_at + (tl0 >= 0) || desc_size > payload_len || desc_size > 64)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "descriptor_size does not fit the descriptor");
        return NULL;
    }
    if (12 + MAX_EXT + payload_len > SLOT - TRAILER) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "payload too large");
        return NULL;
    }
    PyObject *tail_view = NULL; /* payload after the descriptor, made once if a lane needs it */
    PyObject *fallback = NULL, *handoff = NULL;
    Pending pend = {-1, NULL, 0, 0, 0, 0, 0, 0};
    Py_ssize_t forwarded = 0, forwarded_bytes = 0;
    Py_ssize_t n = PyList_GET_SIZE(lanes);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = PyList_GET_ITEM(lanes, k);
        if (!PyObject_TypeCheck(item, &VideoLaneType) || ((VideoLane *)item)->selector == NULL)
            goto python_path;
        VideoLane *lane = (VideoLane *)item;
        SelectorState *sel = (SelectorState *)lane->selector;
        /* LayerSelector.accept, up to the verdicts only Python takes. */
        if (sel->blocked)
            continue;
        if (index != sel->current) {
            if (index != sel->target || !start || !keyframe)
                continue;
            goto python_path; /* START or SWITCH */
        }
        if (ext_seq < sel->switch_ext_seq)
            continue;
        if (sel->allocated < index && sel->target != index)
            continue;
        SendTarget *target = (SendTarget *)lane->target;
        SendCounters *counters = (SendCounters *)lane->counters;
        int paced = target->paced;
        if (keyframe || target->python_path || !(paced || target->ready) || counters->mark == NULL
            || counters->mark == Py_None)
            goto python_path;
        /* FORWARD: DownTrack._place, StreamRewriter.follow_vp8, write_video. */
        RewriterState *rw = (RewriterState *)lane->rewriter;
        long long out_ext_seq = ext_seq + rw->seq_offset;
        uint32_t out_ts = (uint32_t)((timestamp + rw->ts_offset) & 0xFFFFFFFFLL);
        int newest = out_ext_seq > rw->last_ext_seq;
        if (newest) {
            rw->last_ext_seq = out_ext_seq;
            rw->last_ts = out_ts;
            rw->last_ms = now_ms;
            rw->has_last_ms = 1;
        }
        int rewrite = 0;
        long long new_pid = pid, new_tl0 = tl0;
        if (pid >= 0) {
            if (!(rw->pid_offset || rw->tl0_offset)) {
                if (newest) {
                    rw->last_pid = pid;
                    if (tl0 >= 0)
                        rw->last_tl0 = tl0;
                }
            } else {
                rewrite = 1;
                new_pid = (pid + rw->pid_offset) & ((1LL << pid_bits) - 1);
                if (tl0 >= 0) {
                    new_tl0 = (tl0 + rw->tl0_offset) & 0xFF;
                    if (newest)
                        rw->last_tl0 = new_tl0;
                }
                if (newest)
                    rw->last_pid = new_pid;
            }
        }
        /* Build: header, Ferry's extension block, the (rewritten) descriptor, the rest;
         * into the next datagram of the batch, or (paced) into the bytes handed over. */
        int len = (int)(12 + lane->ext_len + payload_len);
        PyObject *packet = NULL;
        unsigned char *buf;
        if (paced) {
            packet = PyBytes_FromStringAndSize(NULL, len);
            if (packet == NULL)
                goto error;
            buf = (unsigned char *)PyBytes_AS_STRING(packet);
        } else {
            if (pend.count && (pend.fd != target->fd || pend.account != target->account)) {
                if (pending_flush(&pend, 1) < 0)
                    goto error;
            }
            pend.fd = target->fd;
            pend.account = target->account;
            buf = fp_buffers[pend.count];
        }
        uint16_t seq16 = (uint16_t)(out_ext_seq & 0xFFFF);
        buf[0] = lane->first_byte;
        buf[1] = (unsigned char)(lane->payload_type | (marker ? 0x80 : 0));
        buf[2] = (unsigned char)(seq16 >> 8);
        buf[3] = (unsigned char)seq16;
        buf[4] = (unsigned char)(out_ts >> 24);
        buf[5] = (unsigned char)(out_ts >> 16);
        buf[6] = (unsigned char)(out_ts >> 8);
        buf[7] = (unsigned char)out_ts;
        buf[8] = (unsigned char)(lane->ssrc >> 24);
        buf[9] = (unsigned char)(lane->ssrc >> 16);
        buf[10] = (unsigned char)(lane->ssrc >> 8);
        buf[11] = (unsigned char)lane->ssrc;
        Py_ssize_t at = 12;
        memcpy(buf + at, lane->ext, (size_t)lane->ext_len);
        at += lane->ext_len;
        Py_ssize_t prefix_len = at;
        PyObject *rest = payload_obj;
        memcpy(buf + at, payload, (size_t)payload_len);
        if (rewrite) {
            unsigned char *d = buf + at;
            if (pid_bits == 7) {
                d[pid_at] = (unsigned char)(new_pid & 0x7F);
            } else {
                d[pid_at] = (unsigned char)(0x80 | ((new_pid >> 8) & 0x7F));
                d[pid_at + 1] = (unsigned char)(new_pid & 0xFF);
            }
            if (tl0 >= 0)
                d[tl0_at] = (unsigned char)new_tl0;
            prefix_len += desc_size;
            if (tail_view == NULL) {
                PyObject *slice = PySlice_New(args[11], Py_None, NULL);
                if (slice == NULL) {
                    Py_XDECREF(packet);
                    goto error;
                }
                tail_view = PyObject_GetItem(payload_obj, slice);
                Py_DECREF(slice);
                if (tail_view == NULL) {
                    Py_XDECREF(packet);
                    goto error;
                }
            }
            rest = tail_view;
        }
        /* The RTX ring keeps the parts, as write_video puts them. */
        PyObject *prefix = PyBytes_FromStringAndSize((const char *)buf, prefix_len);
        if (prefix == NULL) {
            Py_XDECREF(packet);
            goto error;
        }
        int put = rtx_ring_put((RtxRing *)lane->ring, (long)seq16, prefix, rest, now_ms);
        Py_DECREF(prefix);
        if (put < 0) {
            Py_XDECREF(packet);
            goto error;
        }
        counters->packets_sent += 1;
        counters->bytes_sent += payload_len;
        counters->last_rtp_ts = out_ts;
        counters->last_sent_ms = now_ms;
        if (paced) { /* DownTrack.send_built: the pacer, the transport-wide seq, the send */
            if (handoff == NULL && (handoff = PyList_New(0)) == NULL) {
                Py_DECREF(packet);
                goto error;
            }
            PyObject *i = PyLong_FromSsize_t(k);
            int failed = i == NULL || PyList_Append(handoff, i) < 0 || PyList_Append(handoff, packet) < 0;
            Py_XDECREF(i);
            Py_DECREF(packet);
            if (failed)
                goto error;
            continue;
        }
        forwarded += 1;
        forwarded_bytes += len;
        pend.nbytes += len;
        if (fp_protect == NULL || fp_protect((void *)target->srtp, buf, &len) != 0) {
            pend.protect_errors++;
            continue;
        }
        memcpy(&fp_addrs[pend.count], &target->addr, sizeof(target->addr));
        fp_iovs[pend.count].iov_base = buf;
        fp_iovs[pend.count].iov_len = (size_t)len;
        memset(&fp_msgs[pend.count], 0, sizeof(fp_msgs[pend.count]));
        fp_msgs[pend.count].msg_hdr.msg_name = &fp_addrs[pend.count];
        fp_msgs[pend.count].msg_hdr.msg_namelen = target->alen;
        fp_msgs[pend.count].msg_hdr.msg_iov = &fp_iovs[pend.count];
        fp_msgs[pend.count].msg_hdr.msg_iovlen = 1;
        pend.count++;
        if (pend.count >= early) {
            if (pending_flush(&pend, 0) < 0)
                goto error;
        }
        continue;
    python_path:
        if (fallback == NULL && (fallback = PyList_New(0)) == NULL)
            goto error;
        {
            PyObject *i = PyLong_FromSsize_t(k);
            if (i == NULL || PyList_Append(fallback, i) < 0) {
                Py_XDECREF(i);
                goto error;
            }
            Py_DECREF(i);
        }
    }
    if (pending_flush(&pend, 1) < 0)
        goto error;
    PyBuffer_Release(&view);
    Py_XDECREF(tail_view);
    PyObject *result = Py_BuildValue("nnOO", forwarded, forwarded_bytes, fallback ? fallback : Py_None,
                                     handoff ? handoff : Py_None);
    Py_XDECREF(fallback);
    Py_XDECREF(handoff);
    return result;
error:
    if (pend.count) { /* what was built and protected still leaves: its SRTP index is used */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        pending_flush(&pend, 1);
        PyErr_Restore(type, value, tb);
    }
    PyBuffer_Release(&view);
    Py_XDECREF(tail_view);
    Py_XDECREF(fallback);
    Py_XDECREF(handoff);
    return NULL;
}

int lane_add_types(PyObject *m)
{
    PyTypeObject *types[] = {&SelectorStateType, &RewriterStateType, &SendCountersType, &SendTargetType, &VideoLaneType};
    const char *names[] = {"SelectorState", "RewriterState", "SendCounters", "SendTarget", "VideoLane"};
    for (int i = 0; i < 5; i++) {
        if (PyType_Ready(types[i]) < 0)
            return -1;
        Py_INCREF(types[i]);
        if (PyModule_AddObject(m, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(types[i]);
            return -1;
        }
    }
    return 0;
}
