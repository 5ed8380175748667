/* Shared between the native send path's sources: the sendmmsg buffers (_fastpath.c),
 * the RTX ring (_rtx_ring.c) and the video lanes (_lane.c). One extension module,
 * media.transport._fastpath, built from all three. */
#ifndef FERRY_FASTPATH_H
#define FERRY_FASTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define BATCH 64
#define SLOT 2304 /* 2048-byte datagram + libsrtp's maximum trailer (144) and room */
#define TRAILER 144

typedef int (*srtp_protect_fn)(void *ctx, void *rtp_hdr, int *len_ptr);

/* One batch of outgoing datagrams, filled by send_batch or fan_out_video and sent
 * with fp_flush before either returns: never shared across calls. */
extern unsigned char fp_buffers[BATCH][SLOT];
extern struct mmsghdr fp_msgs[BATCH];
extern struct iovec fp_iovs[BATCH];
extern struct sockaddr_storage fp_addrs[BATCH];

/* libsrtp's srtp_protect, as pylibsrtp loaded it (set once: set_protect). */
extern srtp_protect_fn fp_protect;

int fp_fill_addr(const char *host, int port, struct sockaddr_storage *out, socklen_t *len);
/* Send fp_msgs[0..count) on fd; returns how many the kernel took, counting failures. */
Py_ssize_t fp_flush(int fd, int count, Py_ssize_t *send_errors, Py_ssize_t *would_block);

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
