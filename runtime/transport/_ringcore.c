/* The shared-memory ring's per-message work, compiled: the reading end's
 * next_message / release / pending / next_lane and the writer's
 * try_write_message / try_write (shm_ring.py has the layout and the protocols;
 * shm_ring_reader.py and shm_ring_writer.py the same code in Python, which is
 * the fallback where this module is not built).
 *
 * Why compiled: counted per empty round trip, the ring's Python was ~360
 * bytecodes to write a message and ~380 to read one: about half of what
 * each side ran per call. Here each is one call.
 *
 * Safety: the ring is memory another process writes. Every header field is
 * read once into a local, checked as the Python reader checks it, and only
 * the local is used; frames are slices of the ring's memoryview (bounds
 * checked by memoryview, and each an export that keeps the mapping alive, as
 * in Python); the buffers are taken for the length of each call, never kept,
 * so a ring whose views were released fails the call with the memoryview's
 * own ValueError instead of touching unmapped memory. Ordering: the write
 * position is stored with release and loaded with acquire semantics (plain
 * moves on x86-64, barriers where needed elsewhere).
 *
 * Files: this one (the module, the shared memory helpers), _ringcore_reader.c,
 * _ringcore_writer.c, _ringcore.h.
 */
#include "_ringcore.h"

static PyObject *corrupt_error = NULL; /* RingCorrupt, registered from Python */

PyObject *
ringcore_corrupt(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    PyErr_FormatV(corrupt_error ? corrupt_error : PyExc_ValueError, format, args);
    va_end(args);
    return NULL;
}

int
ringcore_mem_get(PyObject *data, PyObject *words, Py_ssize_t capacity, Py_ssize_t readers,
                 int writable_data, Mem *m)
{
    Py_ssize_t nwords = W_READ0 + 8 * readers; /* the header: up to the last reader's line */
    if (data == NULL) { /* made by __new__ without __init__ */
        PyErr_SetString(PyExc_ValueError, "the ring core was not initialised");
        return -1;
    }
    if (PyObject_GetBuffer(words, &m->words, PyBUF_WRITABLE) < 0)
        return -1;
    if (PyObject_GetBuffer(data, &m->data, writable_data ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&m->words);
        return -1;
    }
    if (m->words.len < nwords * 8 || m->data.len < capacity) {
        PyBuffer_Release(&m->data);
        PyBuffer_Release(&m->words);
        PyErr_SetString(PyExc_ValueError, "the ring's memory is smaller than its layout");
        return -1;
    }
    return 0;
}

void
ringcore_mem_release(Mem *m)
{
    PyBuffer_Release(&m->data);
    PyBuffer_Release(&m->words);
}

int
ringcore_ring_fields(PyObject *ring, PyObject **data, PyObject **words, Py_ssize_t *capacity,
                     Py_ssize_t *max_chunk, Py_ssize_t *readers)
{
    PyObject *value;
    Py_ssize_t *ints[] = {capacity, max_chunk, readers};
    const char *names[] = {"capacity", "max_chunk", "readers"};
    for (int i = 0; i < 3; i++) {
        if (!(value = PyObject_GetAttrString(ring, names[i])))
            return -1;
        *ints[i] = PyLong_AsSsize_t(value);
        Py_DECREF(value);
        if (*ints[i] == -1 && PyErr_Occurred())
            return -1;
    }
    if (*capacity <= 0 || *capacity % LINE || *max_chunk <= 0 || *max_chunk > *capacity
            || *readers < 1 || *readers > 64) {
        PyErr_SetString(PyExc_ValueError, "not a ring's shape");
        return -1;
    }
    if (!(*data = PyObject_GetAttrString(ring, "data")))
        return -1;
    if (!(*words = PyObject_GetAttrString(ring, "words"))) {
        Py_CLEAR(*data);
        return -1;
    }
    return 0;
}

/* ---- the module ------------------------------------------------------------------ */

static PyObject *
register_corrupt_error(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls,
                                                (PyTypeObject *)PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "an exception class");
        return NULL;
    }
    Py_INCREF(cls);
    Py_XSETREF(corrupt_error, cls);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"register_corrupt_error", register_corrupt_error, METH_O,
     "The exception class raised for a corrupt ring (shm_ring.RingCorrupt)."},
    {NULL},
};

static struct PyModuleDef ringcore_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "actorexec.runtime.transport._ringcore",
    .m_doc = "The shared-memory ring's per-message work, compiled (see _ringcore.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__ringcore(void)
{
    PyObject *module;
    if (PyType_Ready(&ReaderCoreType) < 0 || PyType_Ready(&WriterCoreType) < 0)
        return NULL;
    if (!(module = PyModule_Create(&ringcore_module)))
        return NULL;
    Py_INCREF(&ReaderCoreType);
    Py_INCREF(&WriterCoreType);
    if (PyModule_AddObject(module, "ReaderCore", (PyObject *)&ReaderCoreType) < 0
            || PyModule_AddObject(module, "WriterCore", (PyObject *)&WriterCoreType) < 0
            || PyModule_AddIntConstant(module, "LAYOUT_VERSION", LAYOUT_VERSION) < 0
            || PyModule_AddIntConstant(module, "LINE", LINE) < 0
            || PyModule_AddIntConstant(module, "RECORD_SIZE", RECORD_SIZE) < 0
            || PyModule_AddIntConstant(module, "W_WRITE", W_WRITE) < 0
            || PyModule_AddIntConstant(module, "W_PUBLISHED", W_PUBLISHED) < 0
            || PyModule_AddIntConstant(module, "W_READ0", W_READ0) < 0
            || PyModule_AddIntConstant(module, "KIND_MESSAGE", KIND_MESSAGE) < 0
            || PyModule_AddIntConstant(module, "KIND_WRAP", KIND_WRAP) < 0
            || PyModule_AddIntConstant(module, "FIRST", FIRST) < 0
            || PyModule_AddIntConstant(module, "LAST", LAST) < 0
            || PyModule_AddIntConstant(module, "CHUNK", CHUNK) < 0
            || PyModule_AddIntConstant(module, "LANE1", LANE1) < 0
            || PyModule_AddIntConstant(module, "MAX_FRAMES", MAX_FRAMES) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
