#include "_fastpath.h"

#include <structmember.h>

#include <math.h>
#include <string.h>

/* ---- RtxRing: media.rtp.rtx.RtxCache in C ------------------------------------------
 *
 * The same ring, slot for slot (see media/rtp/rtx.py for why it is cut this way): put
 * runs once per forwarded packet and subscriber, where the Python class's attribute and
 * array traffic was ~10 % of the forward path. Semantics, counters and errors are the
 * Python class's; tests run the same tables against both.
 */
#define MIN_RESEND_MS 5.0



static int is_power_of_two(Py_ssize_t n) { return n >= 1 && n <= 32768 && (n & (n - 1)) == 0; }

static int RtxRing_clear(RtxRing *self);

static void ring_release(RtxRing *r)
{
    RtxRing_clear(r);
    PyMem_Free(r->seqs);
    PyMem_Free(r->packets);
    PyMem_Free(r->rests);
    PyMem_Free(r->put_ms);
    PyMem_Free(r->resent_ms);
    r->seqs = NULL;
    r->packets = r->rests = NULL;
    r->put_ms = r->resent_ms = NULL;
}

/* Fresh empty arrays for `capacity` slots into the given pointers; -1 on no memory. */
static int ring_alloc(Py_ssize_t capacity, int32_t **seqs, PyObject ***packets, PyObject ***rests, double **put_ms,
                      double **resent_ms)
{
    *seqs = PyMem_Malloc(sizeof(int32_t) * (size_t)capacity);
    *packets = PyMem_Calloc((size_t)capacity, sizeof(PyObject *));
    *rests = PyMem_Calloc((size_t)capacity, sizeof(PyObject *));
    *put_ms = PyMem_Malloc(sizeof(double) * (size_t)capacity);
    *resent_ms = PyMem_Malloc(sizeof(double) * (size_t)capacity);
    if (!*seqs || !*packets || !*rests || !*put_ms || !*resent_ms) {
        PyMem_Free(*seqs);
        PyMem_Free(*packets);
        PyMem_Free(*rests);
        PyMem_Free(*put_ms);
        PyMem_Free(*resent_ms);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < capacity; i++) {
        (*seqs)[i] = -1;
        (*put_ms)[i] = -INFINITY;
        (*resent_ms)[i] = -INFINITY;
    }
    return 0;
}

static int ring_clear_slots(RtxRing *r)
{
    int32_t *seqs;
    PyObject **packets, **rests;
    double *put_ms, *resent_ms;
    if (ring_alloc(r->capacity, &seqs, &packets, &rests, &put_ms, &resent_ms) < 0)
        return -1;
    ring_release(r);
    r->seqs = seqs;
    r->packets = packets;
    r->rests = rests;
    r->put_ms = put_ms;
    r->resent_ms = resent_ms;
    r->tail = 0;
    return 0;
}

static int RtxRing_init(RtxRing *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", "max_age_ms", "max_capacity", NULL};
    Py_ssize_t capacity = 1024;
    double max_age_ms = 1000.0;
    PyObject *max_capacity_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nd$O", kwlist, &capacity, &max_age_ms, &max_capacity_obj))
        return -1;
    Py_ssize_t max_capacity = capacity;
    if (max_capacity_obj != Py_None) {
        max_capacity = PyLong_AsSsize_t(max_capacity_obj);
        if (max_capacity == -1 && PyErr_Occurred())
            return -1;
    }
    if (!is_power_of_two(capacity) || !is_power_of_two(max_capacity)) {
        PyErr_SetString(PyExc_ValueError, "capacity and max_capacity must be powers of two up to 32768");
        return -1;
    }
    if (max_capacity < capacity) {
        PyErr_Format(PyExc_ValueError, "max_capacity %zd is below capacity %zd", max_capacity, capacity);
        return -1;
    }
    if (!(max_age_ms > 0)) {
        PyErr_SetString(PyExc_ValueError, "max_age_ms must be > 0");
        return -1;
    }
    ring_release(self);
    self->capacity = capacity;
    self->max_capacity = max_capacity;
    self->max_age_ms = max_age_ms;
    self->mask = capacity - 1;
    self->hits = self->misses = self->suppressed = 0;
    return ring_clear_slots(self);
}

static int RtxRing_traverse(RtxRing *self, visitproc visit, void *arg)
{
    if (self->packets != NULL) {
        for (Py_ssize_t i = 0; i < self->capacity; i++) {
            Py_VISIT(self->packets[i]);
            Py_VISIT(self->rests[i]);
        }
    }
    return 0;
}

static int RtxRing_clear(RtxRing *self)
{
    if (self->packets != NULL) {
        for (Py_ssize_t i = 0; i < self->capacity; i++) {
            Py_CLEAR(self->packets[i]);
            Py_CLEAR(self->rests[i]);
        }
    }
    return 0;
}

static void RtxRing_dealloc(RtxRing *self)
{
    PyObject_GC_UnTrack(self);
    ring_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Double the ring, every packet at its seq's slot in the new one. */
static int ring_grow(RtxRing *r)
{
    Py_ssize_t old_n = r->capacity;
    int32_t *o_seqs = r->seqs;
    PyObject **o_packets = r->packets, **o_rests = r->rests;
    double *o_put = r->put_ms, *o_resent = r->resent_ms;
    Py_ssize_t n = old_n * 2;
    int32_t *seqs;
    PyObject **packets, **rests;
    double *put_ms, *resent_ms;
    if (ring_alloc(n, &seqs, &packets, &rests, &put_ms, &resent_ms) < 0)
        return -1;
    Py_ssize_t mask = n - 1, tail = 0;
    double oldest = INFINITY;
    for (Py_ssize_t i = 0; i < old_n; i++) {
        if (o_seqs[i] == -1) {
            Py_CLEAR(o_packets[i]);
            Py_CLEAR(o_rests[i]);
            continue;
        }
        Py_ssize_t k = o_seqs[i] & mask;
        seqs[k] = o_seqs[i];
        packets[k] = o_packets[i]; /* references move */
        rests[k] = o_rests[i];
        put_ms[k] = o_put[i];
        resent_ms[k] = o_resent[i];
        if (o_put[i] < oldest) {
            oldest = o_put[i];
            tail = k;
        }
    }
    PyMem_Free(o_seqs);
    PyMem_Free(o_packets);
    PyMem_Free(o_rests);
    PyMem_Free(o_put);
    PyMem_Free(o_resent);
    r->seqs = seqs;
    r->packets = packets;
    r->rests = rests;
    r->put_ms = put_ms;
    r->resent_ms = resent_ms;
    r->capacity = n;
    r->mask = mask;
    r->tail = tail;
    return 0;
}

int rtx_ring_put(RtxRing *self, long seq, PyObject *packet, PyObject *rest, double now_ms)
{
    seq &= 0xFFFF;
    Py_ssize_t i = seq & self->mask;
    int32_t held = self->seqs[i];
    if (held != -1 && held != seq && self->capacity < self->max_capacity
        && self->put_ms[i] >= now_ms - self->max_age_ms) {
        if (ring_grow(self) < 0)
            return -1;
        i = seq & self->mask;
    }
    self->seqs[i] = (int32_t)seq;
    Py_INCREF(packet);
    Py_XINCREF(rest);
    PyObject *old_packet = self->packets[i], *old_rest = self->rests[i];
    self->packets[i] = packet;
    self->rests[i] = rest;
    self->put_ms[i] = now_ms;
    self->resent_ms[i] = -INFINITY;
    Py_XDECREF(old_packet);
    Py_XDECREF(old_rest);
    /* Let go of packets too old to resend (get refuses them anyway). */
    Py_ssize_t tail = self->tail, mask = self->mask;
    double expired = now_ms - self->max_age_ms;
    while (tail != i && self->put_ms[tail] < expired) {
        PyObject *p = self->packets[tail], *q = self->rests[tail];
        self->packets[tail] = NULL;
        self->rests[tail] = NULL;
        self->seqs[tail] = -1;
        Py_XDECREF(p);
        Py_XDECREF(q);
        tail = (tail + 1) & mask;
    }
    self->tail = tail;
    return 0;
}

static PyObject *RtxRing_put(RtxRing *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "put(seq, packet, now_ms, rest=None)");
        return NULL;
    }
    long seq = PyLong_AsLong(args[0]);
    double now_ms = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *rest = nargs == 4 ? args[3] : Py_None;
    if (rtx_ring_put(self, seq, args[1], rest == Py_None ? NULL : rest, now_ms) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *RtxRing_get(RtxRing *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "get(seq, now_ms, rtt_ms=0.0)");
        return NULL;
    }
    long seq = PyLong_AsLong(args[0]);
    double now_ms = PyFloat_AsDouble(args[1]);
    double rtt_ms = nargs == 3 ? PyFloat_AsDouble(args[2]) : 0.0;
    if (PyErr_Occurred())
        return NULL;
    seq &= 0xFFFF;
    Py_ssize_t i = seq & self->mask;
    if (self->seqs[i] != seq || now_ms - self->put_ms[i] > self->max_age_ms) {
        self->misses++;
        Py_RETURN_NONE;
    }
    double hold = rtt_ms * 0.8;
    if (hold < MIN_RESEND_MS)
        hold = MIN_RESEND_MS;
    if (now_ms - self->resent_ms[i] < hold) {
        self->suppressed++;
        Py_RETURN_NONE;
    }
    self->resent_ms[i] = now_ms;
    self->hits++;
    if (self->rests[i] == NULL) {
        Py_INCREF(self->packets[i]);
        return self->packets[i];
    }
    return PyNumber_Add(self->packets[i], self->rests[i]);
}

static PyObject *RtxRing_clear_method(RtxRing *self, PyObject *Py_UNUSED(ignored))
{
    if (ring_clear_slots(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef RtxRing_methods[] = {
    {"put", (PyCFunction)(void (*)(void))RtxRing_put, METH_FASTCALL,
     "put(seq, packet, now_ms, rest=None): remember a packet (with rest: its first part)"},
    {"get", (PyCFunction)(void (*)(void))RtxRing_get, METH_FASTCALL,
     "get(seq, now_ms, rtt_ms=0.0) -> the packet to resend (parts joined), or None"},
    {"clear", (PyCFunction)RtxRing_clear_method, METH_NOARGS, "forget every packet"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef RtxRing_members[] = {
    {"capacity", T_PYSSIZET, offsetof(RtxRing, capacity), READONLY, "slots now"},
    {"max_capacity", T_PYSSIZET, offsetof(RtxRing, max_capacity), READONLY, "slots at most"},
    {"max_age_ms", T_DOUBLE, offsetof(RtxRing, max_age_ms), READONLY, "resend horizon"},
    {"hits", T_LONGLONG, offsetof(RtxRing, hits), 0, "packets returned for resending"},
    {"misses", T_LONGLONG, offsetof(RtxRing, misses), 0, "NACKed packets not held"},
    {"suppressed", T_LONGLONG, offsetof(RtxRing, suppressed), 0, "NACKs within the resend hold"},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject RtxRingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "media.transport._fastpath.RtxRing",
    .tp_basicsize = sizeof(RtxRing),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Ring of recently sent packets for answering NACKs (media.rtp.rtx.RtxCache in C).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RtxRing_init,
    .tp_dealloc = (destructor)RtxRing_dealloc,
    .tp_traverse = (traverseproc)RtxRing_traverse,
    .tp_clear = (inquiry)RtxRing_clear,
    .tp_methods = RtxRing_methods,
    .tp_members = RtxRing_members,
};

