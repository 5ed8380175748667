/* Shared between the native send path's sources: the outbox (_outbox.c), the RTX
 * ring (_rtx_ring.c) and the lanes (_lane.c). One extension module,
 * media.transport._fastpath, built from them and _fastpath.c. */
#ifndef FERRY_FASTPATH_H
#define FERRY_FASTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define BATCH 64 /* messages per sendmmsg(2) */
#define SLOT 2304 /* 2048-byte datagram + libsrtp's maximum trailer (144) and room */
#define TRAILER 144

typedef int (*srtp_protect_fn)(void *ctx, void *rtp_hdr, int *len_ptr);

/* libsrtp's srtp_protect, as pylibsrtp loaded it (set once: set_protect). */
extern srtp_protect_fn fp_protect;

int fp_fill_addr(const char *host, int port, struct sockaddr_storage *out, socklen_t *len);

/* ---- Outbox (_outbox.c): the media socket's outgoing datagrams ---- */
typedef struct Outbox Outbox;
extern PyTypeObject OutboxType;
/* The buffer (SLOT bytes) the next datagram is built in; NULL with an exception set. */
unsigned char *outbox_slot(Outbox *o);
/* Protect (srtp != 0) the datagram built in outbox_slot() and queue it for addr; it
 * leaves once `early` datagrams wait (a held outbox: its cap). Failures are counted. */
void outbox_commit(Outbox *o, unsigned char *buf, int len, const struct sockaddr_storage *addr, socklen_t alen,
                   uintptr_t srtp, int early);
/* The end of one fan-out: a held outbox keeps what waits for the mux's flush; else it
 * is sent and accounted. -1 on a Python error (the account callback's). */
int outbox_settle(Outbox *o);

/* ---- RtxRing (media.rtp.rtx.RtxCache in C) ---- */
typedef struct {
    PyObject_HEAD
    Py_ssize_t capacity;
    Py_ssize_t max_capacity;
    double max_age_ms;
    Py_ssize_t mask;
    Py_ssize_t tail;
    int32_t *seqs;
    PyObject **packets;
    PyObject **rests;
    double *put_ms;
    double *resent_ms;
    long long hits;
    long long misses;
    long long suppressed;
} RtxRing;

extern PyTypeObject RtxRingType;
/* put(seq, packet, now_ms, rest): new references taken; -1 with an exception set. */
int rtx_ring_put(RtxRing *self, long seq, PyObject *packet, PyObject *rest, double now_ms);

/* ---- video lanes (_lane.c) ---- */
int lane_add_types(PyObject *module);
PyObject *fan_out_video(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *fan_out_audio(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#endif
