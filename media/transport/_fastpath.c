/* Native send path for Ferry's media socket: SRTP protect + sendmmsg for a batch; and
 * the module (RtxRing is in _rtx_ring.c, the video lanes in _lane.c).
 *
 * One call takes the datagrams one fan-out (or one timer round) produced and sends
 * them with as few sendmmsg(2) calls as fit (BATCH per call). Each item is either
 * already on the wire form (RTCP, STUN, DTLS: sent as is) or a plain RTP packet with
 * the libsrtp session to protect it with: the packet is copied once into the message
 * buffer, the transport-wide seq is stamped there, and libsrtp's srtp_protect
 * encrypts it in place. libsrtp is pylibsrtp's own copy: Python passes the address of
 * its srtp_protect and each session's srtp_t, so both paths share one SRTP state.
 *
 * items: list of tuples (data: bytes, host: str, port: int, srtp: int, seq_at: int,
 * seq: int); srtp == 0 means "send data as it is". Returns (sent, protect_errors,
 * send_errors, would_block, bytes): bytes is the items' size before SRTP.
 */
#include "_fastpath.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

unsigned char fp_buffers[BATCH][SLOT];
struct mmsghdr fp_msgs[BATCH];
struct iovec fp_iovs[BATCH];
struct sockaddr_storage fp_addrs[BATCH];
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

Py_ssize_t fp_flush(int fd, int count, Py_ssize_t *send_errors, Py_ssize_t *would_block)
{
    int done = 0;
    while (done < count) {
        int r = sendmmsg(fd, fp_msgs + done, (unsigned int)(count - done), 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                *would_block += count - done;
            else
                *send_errors += 1; /* this message fails; go on with the rest */
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            done += 1;
            continue;
        }
        done += r;
    }
    return done;
}

static PyObject *send_batch(PyObject *self, PyObject *args)
{
    int fd;
    unsigned long long protect_addr;
    PyObject *items;
    if (!PyArg_ParseTuple(args, "iKO!", &fd, &protect_addr, &PyList_Type, &items))
        return NULL;
    srtp_protect_fn protect = (srtp_protect_fn)(uintptr_t)protect_addr;
    Py_ssize_t n = PyList_GET_SIZE(items);
    Py_ssize_t sent = 0, protect_errors = 0, send_errors = 0, would_block = 0, nbytes = 0;
    int count = 0;
    /* A fan-out sends to many peers, a pacer burst many packets to one: the address of
     * the previous item is reused when its host object and port are the same. */
    PyObject *last_host = NULL;
    long last_port = -1;
    struct sockaddr_storage last_addr;
    socklen_t last_alen = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 6 || !PyBytes_Check(PyTuple_GET_ITEM(item, 0))
            || !PyUnicode_Check(PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, "items must be (bytes, str, int, int, int, int) tuples");
            return NULL;
        }
        PyObject *data_obj = PyTuple_GET_ITEM(item, 0);
        PyObject *host_obj = PyTuple_GET_ITEM(item, 1);
        const char *data = PyBytes_AS_STRING(data_obj);
        Py_ssize_t size = PyBytes_GET_SIZE(data_obj);
        long port = PyLong_AsLong(PyTuple_GET_ITEM(item, 2));
        unsigned long long ctx = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 3));
        long seq_at = PyLong_AsLong(PyTuple_GET_ITEM(item, 4));
        long seq = PyLong_AsLong(PyTuple_GET_ITEM(item, 5));
        if (PyErr_Occurred())
            return NULL;
        nbytes += size;
        if (size > SLOT - TRAILER) {
            protect_errors++;
            continue;
        }
        unsigned char *buf = fp_buffers[count];
        memcpy(buf, data, (size_t)size);
        int len = (int)size;
        if (ctx != 0) {
            if (seq_at > 0 && seq_at + 2 <= len) {
                buf[seq_at] = (unsigned char)((seq >> 8) & 0xFF);
                buf[seq_at + 1] = (unsigned char)(seq & 0xFF);
            }
            if (protect == NULL || protect((void *)(uintptr_t)ctx, buf, &len) != 0) {
                protect_errors++;
                continue;
            }
        }
        socklen_t alen;
        if (host_obj == last_host && port == last_port) {
            memcpy(&fp_addrs[count], &last_addr, sizeof(last_addr));
            alen = last_alen;
        } else {
            const char *host = PyUnicode_AsUTF8(host_obj);
            if (host == NULL)
                return NULL;
            if (fp_fill_addr(host, (int)port, &fp_addrs[count], &alen) != 0) {
                send_errors++;
                continue;
            }
            last_host = host_obj;
            last_port = port;
            memcpy(&last_addr, &fp_addrs[count], sizeof(last_addr));
            last_alen = alen;
        }
        fp_iovs[count].iov_base = buf;
        fp_iovs[count].iov_len = (size_t)len;
        memset(&fp_msgs[count], 0, sizeof(fp_msgs[count]));
        fp_msgs[count].msg_hdr.msg_name = &fp_addrs[count];
        fp_msgs[count].msg_hdr.msg_namelen = alen;
        fp_msgs[count].msg_hdr.msg_iov = &fp_iovs[count];
        fp_msgs[count].msg_hdr.msg_iovlen = 1;
        count++;
        if (count == BATCH) {
            Py_ssize_t done;
            done = fp_flush(fd, count, &send_errors, &would_block);
            sent += done;
            count = 0;
        }
    }
    if (count) {
        Py_ssize_t done;
        done = fp_flush(fd, count, &send_errors, &would_block);
        sent += done;
    }
    return Py_BuildValue("nnnnn", sent, protect_errors, send_errors, would_block, nbytes);
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
    {"send_batch", send_batch, METH_VARARGS,
     "send_batch(fd, srtp_protect_address, items) -> (sent, protect_errors, send_errors, would_block, bytes)"},
    {"set_protect", set_protect, METH_O, "set_protect(address): libsrtp's srtp_protect, for fan_out_video"},
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
    "SRTP protect + sendmmsg for a batch of datagrams; the RTX ring; video lanes.", -1, methods,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&RtxRingType) < 0)
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
    if (lane_add_types(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
