/* The trendline's least-squares slope in C (media/bwe/trendline.py `_slope`).
 *
 * Why: the fit runs once per group delta of every subscriber's feedback (20 points,
 * two passes), and in Python it is the largest single cost of handling TWCC
 * feedback. The float operations are Python's, in Python's order (IEEE doubles,
 * built with -ffp-contract=off so no fused multiply-add), so the result is the same
 * to the last bit: the estimator's outputs do not depend on which one runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define MAX_POINTS 256

/* Copy up to MAX_POINTS floats of an iterable into out; -1 with an exception set. */
static Py_ssize_t read_floats(PyObject *seq, double *out)
{
    PyObject *it = PyObject_GetIter(seq);
    if (it == NULL)
        return -1;
    Py_ssize_t n = 0;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        if (n == MAX_POINTS) {
            Py_DECREF(item);
            Py_DECREF(it);
            PyErr_SetString(PyExc_ValueError, "slope: more than 256 points");
            return -1;
        }
        double v = PyFloat_AsDouble(item);
        Py_DECREF(item);
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(it);
            return -1;
        }
        out[n++] = v;
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return -1;
    return n;
}

/* slope(xs, ys) -> float | None: None when all x are equal (or fewer than 2 points). */
static PyObject *slope(PyObject *self, PyObject *args)
{
    PyObject *xs_obj, *ys_obj;
    double xs[MAX_POINTS], ys[MAX_POINTS];
    if (!PyArg_ParseTuple(args, "OO:slope", &xs_obj, &ys_obj))
        return NULL;
    Py_ssize_t n = read_floats(xs_obj, xs);
    if (n < 0)
        return NULL;
    Py_ssize_t ny = read_floats(ys_obj, ys);
    if (ny < 0)
        return NULL;
    if (ny != n) {
        PyErr_SetString(PyExc_ValueError, "slope: xs and ys differ in length");
        return NULL;
    }
    if (n < 2)
        Py_RETURN_NONE;
    double sx = 0.0, sy = 0.0;
    for (Py_ssize_t i = 0; i < n; i++)
        sx += xs[i];
    for (Py_ssize_t i = 0; i < n; i++)
        sy += ys[i];
    double mx = sx / (double)n, my = sy / (double)n;
    double num = 0.0, den = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double dx = xs[i] - mx;
        num += dx * (ys[i] - my);
        den += dx * dx;
    }
    if (den == 0.0)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(num / den);
}

static PyMethodDef methods[] = {
    {"slope", slope, METH_VARARGS, "Least-squares slope of ys over xs (None: all xs equal)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_trendfit", "The trendline's slope in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__trendfit(void)
{
    return PyModule_Create(&module);
}
