/* Lanes: a packet's fan-out to its subscribers in one call.
 *
 * In Python, forwarding one packet to N subscribers is N passes through the
 * DownTrack, the layer selector, the stream rewriter, the RTX ring, the send counters
 * and the transport: ten calls per packet and subscriber, about half of the forward
 * path's cost. A Lane is one DownTrack's steady state seen from C, through the same
 * objects: the selector's, rewriter's, counters' and DownTrack's fields live in the C
 * base classes below, which the Python classes extend, so every value has one copy.
 * fan_out_video / fan_out_audio walk a track's lanes for one packet: they drop what the
 * selector would drop and forward what it would forward (seq/timestamp/picture id
 * continuity, plain Opus with its audio level and RED history, the RTX ring, the
 * counters, SRTP into the media socket's outbox). Every packet that needs a decision
 * (a layer start or switch, a keyframe a subscriber waits for, RED toward a lossy
 * listener, duplicates, the NACK-loss window's roll, a subscriber that is not
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
    double fraction_lost;
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
    {"fraction_lost", T_DOUBLE, offsetof(SendCounters, fraction_lost), 0, "from the receiver's last report"},
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
    struct sockaddr_storage addr;
    socklen_t alen;
    uintptr_t srtp;
    Outbox *outbox; /* the media socket's (the mux's): shared by every target on it */
} SendTarget;

static PyObject *Target_set(SendTarget *self, PyObject *args)
{
    int port;
    const char *host;
    unsigned long long srtp;
    PyObject *outbox;
    if (!PyArg_ParseTuple(args, "O!siK", &OutboxType, &outbox, &host, &port, &srtp))
        return NULL;
    if (srtp == 0) {
        PyErr_SetString(PyExc_ValueError, "a target needs an SRTP session");
        return NULL;
    }
    if (fp_fill_addr(host, port, &self->addr, &self->alen) != 0) {
        PyErr_Format(PyExc_ValueError, "not a numeric address: %s", host);
        return NULL;
    }
    self->srtp = (uintptr_t)srtp;
    Py_INCREF(outbox);
    Py_XSETREF(self->outbox, (Outbox *)outbox);
    self->ready = 1;
    Py_RETURN_NONE;
}

static int Target_traverse(SendTarget *self, visitproc visit, void *arg)
{
    Py_VISIT(self->outbox);
    return 0;
}

static int Target_clear(SendTarget *self)
{
    self->ready = 0;
    self->srtp = 0;
    Py_CLEAR(self->outbox);
    return 0;
}

static PyObject *Target_clear_method(SendTarget *self, PyObject *Py_UNUSED(ignored))
{
    Target_clear(self);
    Py_RETURN_NONE;
}

static void Target_dealloc(SendTarget *self)
{
    PyObject_GC_UnTrack(self);
    Target_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Target_methods[] = {
    {"set", (PyCFunction)Target_set, METH_VARARGS,
     "set(outbox, host, port, srtp_address): packets go to host:port through the media socket's outbox, "
     "protected with that session"},
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

/* ---- DownTrackState: DownTrack's audio fields a lane reads and moves ---------------- */
typedef struct {
    PyObject_HEAD
    int window_sent; /* audio packets sent in the current NACK-loss window */
    double nack_loss;
    int red_level;
} DownTrackState;

static PyMemberDef DownState_members[] = {
    {"_window_sent", T_INT, offsetof(DownTrackState, window_sent), 0, NULL},
    {"nack_loss", T_DOUBLE, offsetof(DownTrackState, nack_loss), 0, "audio loss before repair (NACKed share)"},
    {"_red_level", T_INT, offsetof(DownTrackState, red_level), 0, "RED distance, with hysteresis"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject DownTrackStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media.transport._fastpath.DownTrackState",
    .tp_basicsize = sizeof(DownTrackState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The fields of DownTrack an audio lane reads and moves (base class).",
    .tp_new = PyType_GenericNew,
    .tp_members = DownState_members,
};

/* ---- RedHistory: the frames a RedEncoder repeats ------------------------------------- */
typedef struct {
    PyObject_HEAD
    int capacity; /* 1 or 2 */
    int count;
    long long ts[2];
    PyObject *data[2]; /* oldest first */
} RedHistory;

static void red_remember(RedHistory *h, long long ts, PyObject *data)
{
    Py_INCREF(data);
    if (h->count == h->capacity) {
        PyObject *old = h->data[0];
        if (h->capacity == 2) {
            h->ts[0] = h->ts[1];
            h->data[0] = h->data[1];
        }
        h->ts[h->capacity - 1] = ts;
        h->data[h->capacity - 1] = data;
        Py_DECREF(old);
        return;
    }
    h->ts[h->count] = ts;
    h->data[h->count] = data;
    h->count++;
}

static void red_forget(RedHistory *h)
{
    for (int i = 0; i < h->count; i++)
        Py_CLEAR(h->data[i]);
    h->count = 0;
}

static int RedHistory_init(RedHistory *self, PyObject *args, PyObject *kwds)
{
    int capacity = 1;
    if (!PyArg_ParseTuple(args, "|i", &capacity))
        return -1;
    if (capacity != 1 && capacity != 2) {
        PyErr_SetString(PyExc_ValueError, "a RED history holds 1 or 2 frames");
        return -1;
    }
    red_forget(self);
    self->capacity = capacity;
    return 0;
}

static PyObject *RedHistory_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    RedHistory *self = (RedHistory *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->capacity = 1;
    return (PyObject *)self;
}

static void RedHistory_dealloc(RedHistory *self)
{
    red_forget(self); /* bytes and views of bytes: no cycle through them */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *RedHistory_remember(RedHistory *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_remember(timestamp, data)");
        return NULL;
    }
    long long ts = PyLong_AsLongLong(args[0]);
    if (ts == -1 && PyErr_Occurred())
        return NULL;
    red_remember(self, ts, args[1]);
    Py_RETURN_NONE;
}

static PyObject *RedHistory_frames(RedHistory *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(self->count);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < self->count; i++) {
        PyObject *item = Py_BuildValue("LO", self->ts[i], self->data[i]);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

static PyObject *RedHistory_forget(RedHistory *self, PyObject *Py_UNUSED(ignored))
{
    red_forget(self);
    Py_RETURN_NONE;
}

static PyMethodDef RedHistory_methods[] = {
    {"_remember", (PyCFunction)(void (*)(void))RedHistory_remember, METH_FASTCALL, "keep a frame (the oldest goes)"},
    {"_frames", (PyCFunction)RedHistory_frames, METH_NOARGS, "[(timestamp, data)], oldest first"},
    {"_forget", (PyCFunction)RedHistory_forget, METH_NOARGS, "forget every frame"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RedHistoryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media.transport._fastpath.RedHistory",
    .tp_basicsize = sizeof(RedHistory),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The last frames a RedEncoder repeats (base class).",
    .tp_new = RedHistory_new,
    .tp_init = (initproc)RedHistory_init,
    .tp_dealloc = (destructor)RedHistory_dealloc,
    .tp_methods = RedHistory_methods,
};

/* ---- Lane ----------------------------------------------------------------------------- */
#define MAX_EXT 16

/* One DownTrack's steady state: a video lane (state == NULL) or an audio lane. */
typedef struct {
    PyObject_HEAD
    PyObject *selector; /* SelectorState */
    PyObject *rewriter; /* RewriterState */
    PyObject *counters; /* SendCounters */
    PyObject *ring;     /* RtxRing */
    PyObject *target;   /* SendTarget */
    PyObject *state;    /* audio: DownTrackState (the DownTrack itself) */
    PyObject *red;      /* audio: RedHistory, or NULL when the subscriber takes no RED */
    unsigned char first_byte;
    unsigned char payload_type;
    uint32_t ssrc;
    unsigned char ext[MAX_EXT]; /* video: the whole block; audio: up to the level element */
    int ext_len;
    int level_id; /* audio: the level element's id, 0 for none */
    int ext_pad;  /* audio: zero bytes after the level element */
} Lane;

static int Lane_init(Lane *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"selector", "rewriter", "counters", "ring", "target", "first_byte", "payload_type",
                             "ssrc", "extensions", "state", "red", "level_id", "extension_pad", NULL};
    PyObject *selector, *rewriter, *counters, *ring, *target, *state = Py_None, *red = Py_None;
    int first_byte, payload_type, level_id = 0, pad = 0;
    unsigned long ssrc;
    Py_buffer ext;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!O!iiky*|$OOii", kwlist, &SelectorStateType, &selector,
                                     &RewriterStateType, &rewriter, &SendCountersType, &counters, &RtxRingType, &ring,
                                     &SendTargetType, &target, &first_byte, &payload_type, &ssrc, &ext, &state, &red,
                                     &level_id, &pad))
        return -1;
    const char *error = NULL;
    if (state != Py_None && !PyObject_TypeCheck(state, &DownTrackStateType))
        error = "state must be a DownTrackState or None";
    else if (red != Py_None && (state == Py_None || !PyObject_TypeCheck(red, &RedHistoryType)))
        error = "red: a RedHistory, for an audio lane";
    else if (level_id < 0 || level_id > 14 || pad < 0 || pad > 3 || ext.len + (level_id ? 2 : 0) + pad > MAX_EXT
             || (state == Py_None && (ext.len % 4 != 0 || level_id || pad)))
        error = "the extension block does not fit";
    if (error != NULL) {
        PyBuffer_Release(&ext);
        PyErr_SetString(PyExc_ValueError, error);
        return -1;
    }
    memcpy(self->ext, ext.buf, (size_t)ext.len);
    self->ext_len = (int)ext.len;
    PyBuffer_Release(&ext);
    PyObject *refs[] = {selector, rewriter, counters, ring, target, state, red};
    PyObject **slots[] = {&self->selector, &self->rewriter, &self->counters, &self->ring,
                          &self->target, &self->state, &self->red};
    for (int i = 0; i < 7; i++) {
        PyObject *ref = refs[i] == Py_None ? NULL : refs[i];
        Py_XINCREF(ref);
        Py_XSETREF(*slots[i], ref);
    }
    self->first_byte = (unsigned char)first_byte;
    self->payload_type = (unsigned char)(payload_type & 0x7F);
    self->ssrc = (uint32_t)ssrc;
    self->level_id = level_id;
    self->ext_pad = pad;
    return 0;
}

static int Lane_traverse(Lane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->selector);
    Py_VISIT(self->rewriter);
    Py_VISIT(self->counters);
    Py_VISIT(self->ring);
    Py_VISIT(self->target);
    Py_VISIT(self->state);
    Py_VISIT(self->red);
    return 0;
}

static int Lane_clear(Lane *self)
{
    Py_CLEAR(self->selector);
    Py_CLEAR(self->rewriter);
    Py_CLEAR(self->counters);
    Py_CLEAR(self->ring);
    Py_CLEAR(self->target);
    Py_CLEAR(self->state);
    Py_CLEAR(self->red);
    return 0;
}

static void Lane_dealloc(Lane *self)
{
    PyObject_GC_UnTrack(self);
    Lane_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media.transport._fastpath.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Lane(selector, rewriter, counters, ring, target, first_byte, payload_type, ssrc, extensions, *, "
              "state=None, red=None, level_id=0, extension_pad=0): one DownTrack's steady state, forwarded "
              "from C by fan_out_video (a video lane: no state) or fan_out_audio (state: the DownTrack).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
};

/* The lane at lanes[k] when it is one of this kind with its references; else NULL. */
static Lane *lane_of(PyObject *lanes, Py_ssize_t k, int audio)
{
    PyObject *item = PyList_GET_ITEM(lanes, k);
    if (!PyObject_TypeCheck(item, &LaneType))
        return NULL;
    Lane *lane = (Lane *)item;
    if (lane->selector == NULL || (lane->state != NULL) != audio)
        return NULL;
    return lane;
}

/* ---- what both fan-outs share ------------------------------------------------------- */

/* The outbox one fan-out fills (its targets' socket's), held for the fan-out. */
typedef struct {
    Outbox *outbox;
} Pending;

/* The end of the fan-out on this outbox (see outbox_settle). -1 on a Python error. */
static int pending_settle(Pending *p)
{
    Outbox *o = p->outbox;
    if (o == NULL)
        return 0;
    p->outbox = NULL;
    int r = outbox_settle(o);
    Py_DECREF(o);
    return r;
}

/* The next datagram's buffer, in the outbox of `target`; NULL with an exception set. */
static unsigned char *pending_buffer(Pending *p, SendTarget *target)
{
    if (p->outbox != target->outbox) {
        if (pending_settle(p) < 0)
            return NULL;
        Py_INCREF(target->outbox);
        p->outbox = target->outbox;
    }
    return outbox_slot(p->outbox);
}

/* Protect the datagram built in pending_buffer() and queue it. */
static void pending_add(Pending *p, SendTarget *target, unsigned char *buf, int len, long early)
{
    outbox_commit(p->outbox, buf, len, &target->addr, target->alen, target->srtp, (int)early);
}

/* Verdicts of lane_verdict: LayerSelector.accept's, with PYTHON for START and SWITCH
 * (and a video keyframe while the selector's keyframe waiter waits for one). */
enum { L_DROP, L_FORWARD, L_PYTHON };

/* Whether the selector's keyframe waiter waits (LayerSelector.waiter._waiting): only
 * then must it hear of a keyframe on the current layer, from the Python path; for one
 * that does not wait hearing of it changes nothing. 1 when it cannot be read. */
static int waiter_waits(SelectorState *sel)
{
    PyObject *waiter = PyObject_GetAttrString((PyObject *)sel, "waiter");
    if (waiter == NULL) {
        PyErr_Clear();
        return 1;
    }
    PyObject *waiting = PyObject_GetAttrString(waiter, "_waiting");
    Py_DECREF(waiter);
    if (waiting == NULL) {
        PyErr_Clear();
        return 1;
    }
    int r = PyObject_IsTrue(waiting);
    Py_DECREF(waiting);
    if (r < 0) {
        PyErr_Clear();
        return 1;
    }
    return r;
}

static int lane_verdict(SelectorState *sel, long index, long long ext_seq, int keyframe, int start, int is_video)
{
    if (sel->blocked)
        return L_DROP;
    if (index != sel->current) {
        if (index != sel->target || !start || !(keyframe || !is_video))
            return L_DROP;
        return L_PYTHON;
    }
    if (ext_seq < sel->switch_ext_seq)
        return L_DROP;
    if (sel->allocated < index && sel->target != index)
        return L_DROP;
    return keyframe && is_video && waiter_waits(sel) ? L_PYTHON : L_FORWARD;
}

/* DownTrack._place's FORWARD arm: where the packet goes in the outgoing stream. */
static long long lane_place(RewriterState *rw, long long ext_seq, long long timestamp, double now_ms, uint32_t *out_ts,
                            int *newest)
{
    long long out_ext_seq = ext_seq + rw->seq_offset;
    *out_ts = (uint32_t)((timestamp + rw->ts_offset) & 0xFFFFFFFFLL);
    *newest = out_ext_seq > rw->last_ext_seq;
    if (*newest) {
        rw->last_ext_seq = out_ext_seq;
        rw->last_ts = *out_ts;
        rw->last_ms = now_ms;
        rw->has_last_ms = 1;
    }
    return out_ext_seq;
}

static void put_header(unsigned char *buf, unsigned char first_byte, unsigned char pt, int marker, uint16_t seq,
                       uint32_t ts, uint32_t ssrc)
{
    buf[0] = first_byte;
    buf[1] = (unsigned char)(pt | (marker ? 0x80 : 0));
    buf[2] = (unsigned char)(seq >> 8);
    buf[3] = (unsigned char)seq;
    buf[4] = (unsigned char)(ts >> 24);
    buf[5] = (unsigned char)(ts >> 16);
    buf[6] = (unsigned char)(ts >> 8);
    buf[7] = (unsigned char)ts;
    buf[8] = (unsigned char)(ssrc >> 24);
    buf[9] = (unsigned char)(ssrc >> 16);
    buf[10] = (unsigned char)(ssrc >> 8);
    buf[11] = (unsigned char)ssrc;
}

static int append_index(PyObject **list, Py_ssize_t k)
{
    if (*list == NULL && (*list = PyList_New(0)) == NULL)
        return -1;
    PyObject *i = PyLong_FromSsize_t(k);
    int failed = i == NULL || PyList_Append(*list, i) < 0;
    Py_XDECREF(i);
    return failed ? -1 : 0;
}

/* A paced subscriber's packet, handed to Python: [index, packet, ...]. Steals packet. */
static int append_handoff(PyObject **list, Py_ssize_t k, PyObject *packet)
{
    int failed = append_index(list, k) < 0 || PyList_Append(*list, packet) < 0;
    Py_DECREF(packet);
    return failed ? -1 : 0;
}

static void count_sent(SendCounters *c, Py_ssize_t payload_len, uint32_t out_ts, double now_ms)
{
    c->packets_sent += 1;
    c->bytes_sent += payload_len;
    c->last_rtp_ts = out_ts;
    c->last_sent_ms = now_ms;
}

/* What every fan-out returns, and cleans up on the way out. */
typedef struct {
    Pending pend;
    Py_ssize_t forwarded, forwarded_bytes;
    PyObject *fallback, *handoff;
} FanOut;

static PyObject *fan_out_finish(FanOut *f, int failed)
{
    PyObject *result = NULL;
    if (failed) {
        if (f->pend.outbox != NULL) { /* what was built and protected still leaves: its SRTP index is used */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            pending_settle(&f->pend);
            PyErr_Restore(type, value, tb);
        }
    } else if (pending_settle(&f->pend) == 0) {
        result = Py_BuildValue("nnOO", f->forwarded, f->forwarded_bytes, f->fallback ? f->fallback : Py_None,
                               f->handoff ? f->handoff : Py_None);
    }
    Py_XDECREF(f->fallback);
    Py_XDECREF(f->handoff);
    return result;
}

/* Where a lane builds its packet: the next slot of the outbox, or (paced) new bytes
 * handed over to Python (*packet). NULL with an exception set. */
static unsigned char *lane_buffer(FanOut *f, SendTarget *target, int paced, int len, PyObject **packet)
{
    if (!paced)
        return pending_buffer(&f->pend, target);
    *packet = PyBytes_FromStringAndSize(NULL, len);
    return *packet ? (unsigned char *)PyBytes_AS_STRING(*packet) : NULL;
}

/* The packet lane k built leaves: handed over (paced: steals packet) or protected into
 * the outbox. -1 on a Python error. */
static int lane_send(FanOut *f, Py_ssize_t k, SendTarget *target, PyObject *packet, unsigned char *buf, int len,
                     long early)
{
    if (target->paced) /* the subscriber's pacer and transport-wide seq (SubscriberPeer.send_rtp) */
        return append_handoff(&f->handoff, k, packet);
    Py_XDECREF(packet);
    f->forwarded += 1;
    f->forwarded_bytes += len;
    pending_add(&f->pend, target, buf, len, early);
    return 0;
}

/* The arguments every fan-out starts with: nargs, and lanes a list. */
static int fan_out_args(Py_ssize_t nargs, Py_ssize_t expected, const char *name, PyObject *lanes)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, expected);
        return -1;
    }
    if (!PyList_Check(lanes)) {
        PyErr_SetString(PyExc_TypeError, "lanes must be a list");
        return -1;
    }
    return 0;
}

/* ---- fan_out_video ------------------------------------------------------------------ */

/* fan_out_video(lanes, index, payload, timestamp, marker, ext_seq, keyframe, start,
 *               picture_id, picture_id_bits, tl0picidx, descriptor_size, now_ms, early)
 *   -> (forwarded, forwarded_bytes, fallback, handoff)
 *
 * lanes: list of Lane or None, in the order of the track's DownTracks. payload:
 * the packet's payload (a buffer; kept by the RTX rings, sliced after the descriptor
 * when a lane rewrites it). picture_id / tl0picidx: -1 when the descriptor has none.
 * early: an outbox not held sends once this many datagrams are built (the first
 * subscribers need not wait for the last ones; a held one waits for its cap).
 * fallback: indexes of the lanes the Python path must handle (None when there are
 * none); forwarded / forwarded_bytes: packets sent from here and their size before
 * SRTP, as DownTrack.write_video counts them. handoff: for paced
 * subscribers, [index, packet, index, packet, ...] (None when there are none): built,
 * cached and counted here, sent by DownTrack.send_built through the pacer. */
PyObject *fan_out_video(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *lanes = nargs > 0 ? args[0] : NULL;
    if (fan_out_args(nargs, 14, "fan_out_video", lanes) < 0)
        return NULL;
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
    FanOut f = {{NULL}, 0, 0, NULL, NULL};
    int failed = 0;
    Py_ssize_t n = PyList_GET_SIZE(lanes);
    for (Py_ssize_t k = 0; k < n && !failed; k++) {
        Lane *lane = lane_of(lanes, k, 0);
        if (lane == NULL) {
            failed = append_index(&f.fallback, k) < 0;
            continue;
        }
        int verdict = lane_verdict((SelectorState *)lane->selector, index, ext_seq, keyframe, start, 1);
        if (verdict == L_DROP)
            continue;
        SendTarget *target = (SendTarget *)lane->target;
        SendCounters *counters = (SendCounters *)lane->counters;
        int paced = target->paced;
        if (verdict == L_PYTHON || target->python_path || !(paced || target->ready) || counters->mark == NULL
            || counters->mark == Py_None) {
            failed = append_index(&f.fallback, k) < 0;
            continue;
        }
        /* FORWARD: DownTrack._place, StreamRewriter.follow_vp8, write_video. */
        RewriterState *rw = (RewriterState *)lane->rewriter;
        uint32_t out_ts;
        int newest;
        long long out_ext_seq = lane_place(rw, ext_seq, timestamp, now_ms, &out_ts, &newest);
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
         * into the next slot of the outbox, or (paced) into the bytes handed over. */
        int len = (int)(12 + lane->ext_len + payload_len);
        PyObject *packet = NULL;
        unsigned char *buf = lane_buffer(&f, target, paced, len, &packet);
        if (buf == NULL) {
            failed = 1;
            break;
        }
        uint16_t seq16 = (uint16_t)(out_ext_seq & 0xFFFF);
        put_header(buf, lane->first_byte, lane->payload_type, marker, seq16, out_ts, lane->ssrc);
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
                tail_view = slice ? PyObject_GetItem(payload_obj, slice) : NULL;
                Py_XDECREF(slice);
            }
            rest = tail_view;
        }
        /* The RTX ring keeps the parts, as write_video puts them. */
        PyObject *prefix = rest ? PyBytes_FromStringAndSize((const char *)buf, prefix_len) : NULL;
        if (prefix == NULL || rtx_ring_put((RtxRing *)lane->ring, (long)seq16, prefix, rest, now_ms) < 0) {
            Py_XDECREF(prefix);
            Py_XDECREF(packet);
            failed = 1;
            break;
        }
        Py_DECREF(prefix);
        count_sent(counters, payload_len, out_ts, now_ms);
        failed = lane_send(&f, k, target, packet, buf, len, early) < 0; /* paced: DownTrack.send_built */
    }
    PyBuffer_Release(&view);
    Py_XDECREF(tail_view);
    return fan_out_finish(&f, failed);
}

/* ---- fan_out_audio ------------------------------------------------------------------ */

/* DownTrack._red_distance: the RED distance for the subscriber's loss, with hysteresis. */
static int red_level(double loss, int current)
{
    if (loss >= 0.10)
        return 2;
    if (loss >= 0.02)
        return (loss >= 0.05 || current) ? (current > 1 ? current : 1) : 1;
    if (loss < 0.01)
        return 0;
    return current;
}

/* fan_out_audio(lanes, index, payload, primary_at, timestamp, marker, ext_seq, level,
 *               nack_window, now_ms, early) -> (forwarded, forwarded_bytes, fallback, handoff)
 *
 * One Opus packet (payload: plain Opus, or RED whose primary block starts at
 * primary_at; -1: not RED) to the lanes of an audio track, for the subscribers that
 * get plain Opus: without RED, or with RED on a clean link (distance 0; the frame is
 * kept as RED history, as DownTrack._red_history does). Everything else is the Python
 * path's: RED out, duplicates, the NACK-loss window's roll (nack_window packets),
 * a stream start. level: the ssrc-audio-level byte. Returns as fan_out_video. */
PyObject *fan_out_audio(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *lanes = nargs > 0 ? args[0] : NULL;
    if (fan_out_args(nargs, 11, "fan_out_audio", lanes) < 0)
        return NULL;
    long index = PyLong_AsLong(args[1]);
    PyObject *payload_obj = args[2];
    Py_ssize_t primary_at = PyLong_AsSsize_t(args[3]);
    long long timestamp = PyLong_AsLongLong(args[4]);
    int marker = PyObject_IsTrue(args[5]);
    long long ext_seq = PyLong_AsLongLong(args[6]);
    long level = PyLong_AsLong(args[7]);
    long nack_window = PyLong_AsLong(args[8]);
    double now_ms = PyFloat_AsDouble(args[9]);
    long early = PyLong_AsLong(args[10]);
    if (PyErr_Occurred() || marker < 0)
        return NULL;
    if (early < 1 || early > BATCH)
        early = BATCH;
    Py_buffer view;
    if (PyObject_GetBuffer(payload_obj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int is_red = primary_at >= 0;
    Py_ssize_t skip = is_red ? primary_at : 0;
    if (skip > view.len || 12 + MAX_EXT + view.len > SLOT - TRAILER) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "primary_at or payload size out of range");
        return NULL;
    }
    const unsigned char *primary = (const unsigned char *)view.buf + skip;
    Py_ssize_t primary_len = view.len - skip;
    /* The frame a RED history keeps: a view of immutable bytes as it is, else a copy
     * (RedEncoder.remember), made once for every listener. */
    PyObject *kept = NULL;
    FanOut f = {{NULL}, 0, 0, NULL, NULL};
    int failed = 0;
    Py_ssize_t n = PyList_GET_SIZE(lanes);
    for (Py_ssize_t k = 0; k < n && !failed; k++) {
        Lane *lane = lane_of(lanes, k, 1);
        if (lane == NULL) {
            failed = append_index(&f.fallback, k) < 0;
            continue;
        }
        int verdict = lane_verdict((SelectorState *)lane->selector, index, ext_seq, 0, 1, 0);
        if (verdict == L_DROP)
            continue;
        SendTarget *target = (SendTarget *)lane->target;
        SendCounters *counters = (SendCounters *)lane->counters;
        DownTrackState *state = (DownTrackState *)lane->state;
        int paced = target->paced;
        int python = verdict == L_PYTHON || target->python_path || !(paced || target->ready) || counters->mark == NULL
                     || counters->mark == Py_None || state->window_sent + 1 >= nack_window;
        if (!python && lane->red != NULL) {
            double loss = counters->fraction_lost > state->nack_loss ? counters->fraction_lost : state->nack_loss;
            python = red_level(loss, state->red_level) != 0; /* RED out: the Python path */
        }
        if (python) {
            failed = append_index(&f.fallback, k) < 0;
            continue;
        }
        /* DownTrack.write_audio, plain Opus out. */
        uint32_t out_ts;
        int newest;
        long long out_ext_seq = lane_place((RewriterState *)lane->rewriter, ext_seq, timestamp, now_ms, &out_ts, &newest);
        state->window_sent += 1;
        if (lane->red != NULL) {
            state->red_level = 0;
            if (!is_red) {
                if (kept == NULL) {
                    PyObject *base = PyMemoryView_Check(payload_obj) ? PyMemoryView_GET_BASE(payload_obj) : NULL;
                    kept = base != NULL && PyBytes_CheckExact(base)
                               ? Py_NewRef(payload_obj)
                               : PyBytes_FromStringAndSize((const char *)primary, primary_len);
                    if (kept == NULL) {
                        failed = 1;
                        break;
                    }
                }
                red_remember((RedHistory *)lane->red, (long long)out_ts, kept);
            }
        }
        int ext_len = lane->ext_len + (lane->level_id ? 2 : 0) + lane->ext_pad;
        int len = (int)(12 + ext_len + primary_len);
        PyObject *packet = NULL; /* the bytes the RTX ring keeps (and a paced subscriber gets) */
        unsigned char *buf = lane_buffer(&f, target, paced, len, &packet);
        if (buf == NULL) {
            failed = 1;
            break;
        }
        put_header(buf, lane->first_byte, lane->payload_type, marker, (uint16_t)(out_ext_seq & 0xFFFF), out_ts,
                   lane->ssrc);
        unsigned char *e = buf + 12;
        memcpy(e, lane->ext, (size_t)lane->ext_len);
        e += lane->ext_len;
        if (lane->level_id) {
            e[0] = (unsigned char)(lane->level_id << 4);
            e[1] = (unsigned char)level;
            e += 2;
        }
        memset(e, 0, (size_t)lane->ext_pad);
        e += lane->ext_pad;
        memcpy(e, primary, (size_t)primary_len);
        /* The RTX ring keeps the whole packet (audio is small). */
        if (packet == NULL)
            packet = PyBytes_FromStringAndSize((const char *)buf, len);
        if (packet == NULL || rtx_ring_put((RtxRing *)lane->ring, (long)(out_ext_seq & 0xFFFF), packet, NULL, now_ms) < 0) {
            Py_XDECREF(packet);
            failed = 1;
            break;
        }
        count_sent(counters, primary_len, out_ts, now_ms);
        failed = lane_send(&f, k, target, packet, buf, len, early) < 0;
    }
    PyBuffer_Release(&view);
    Py_XDECREF(kept);
    return fan_out_finish(&f, failed);
}

int lane_add_types(PyObject *m)
{
    PyTypeObject *types[] = {&SelectorStateType, &RewriterStateType, &SendCountersType, &SendTargetType,
                             &DownTrackStateType, &RedHistoryType, &LaneType};
    const char *names[] = {"SelectorState", "RewriterState", "SendCounters", "SendTarget",
                           "DownTrackState", "RedHistory", "Lane"};
    for (int i = 0; i < 7; i++) {
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
