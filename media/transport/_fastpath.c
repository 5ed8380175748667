/* The native send path's module: libsrtp's protect for the lanes and the outbox, the
 * address parsing they share; the Outbox is in _outbox.c, the RTX ring in _rtx_ring.c,
 * the lanes in _lane.c.
 *
 * libsrtp is pylibsrtp's own copy: Python passes the address of its srtp_protect and
 * each session's srtp_t, so both send paths share one SRTP state.
 */
#include "_fastpath.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

srtp_protect_fn fp_protect = NULL;

int fp_fill_addr(const char *host, int port, struct sockaddr_storage *out, socklen_t *len)
{
    memset(out, 0, sizeof(*out));
    if (strchr(host, ':') != NULL) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((unsigned short)port);
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
            return -1;
        *len = sizeof(*a6);
        return 0;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)out;
    a4->sin_family = AF_INET;
    a4->sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
        return -1;
    *len = sizeof(*a4);
    return 0;
}

static PyObject *set_protect(PyObject *self, PyObject *arg)
{
    unsigned long long address = PyLong_AsUnsignedLongLong(arg);
    if (address == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    fp_protect = (srtp_protect_fn)(uintptr_t)address;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"set_protect", set_protect, METH_O, "set_protect(address): libsrtp's srtp_protect, for the lanes and the outbox"},
    {"fan_out_video", (PyCFunction)(void (*)(void))fan_out_video, METH_FASTCALL,
     "fan_out_video(lanes, index, payload, timestamp, marker, ext_seq, keyframe, start, picture_id, "
     "picture_id_bits, tl0picidx, descriptor_size, now_ms, early) -> (forwarded, forwarded_bytes, fallback, handoff)"},
    {"fan_out_audio", (PyCFunction)(void (*)(void))fan_out_audio, METH_FASTCALL,
     "fan_out_audio(lanes, index, payload, primary_at, timestamp, marker, ext_seq, level, nack_window, now_ms, "
     "early) -> (forwarded, forwarded_bytes, fallback, handoff)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath",
    "The native send path: the outbox (SRTP protect, sendmmsg, UDP GSO), the RTX ring, the lanes.", -1, methods,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&RtxRingType) < 0 || PyType_Ready(&OutboxType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RtxRingType);
    if (PyModule_AddObject(m, "RtxRing", (PyObject *)&RtxRingType) < 0) {
        Py_DECREF(&RtxRingType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&OutboxType);
    if (PyModule_AddObject(m, "Outbox", (PyObject *)&OutboxType) < 0) {
        Py_DECREF(&OutboxType);
        Py_DECREF(m);
        return NULL;
    }
    if (lane_add_types(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
