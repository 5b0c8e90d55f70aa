/* The writer of a ring, compiled (shm_ring_writer.py is the same in Python). */
#include "_ringcore.h"

typedef struct {
    PyObject_HEAD
    PyObject *ring, *data, *words;
    Py_ssize_t capacity, max_chunk, readers;
    uint64_t seq, limit;
} WriterCore;

static int
writer_init(WriterCore *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ring", NULL};
    PyObject *ring;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &ring))
        return -1;
    Py_CLEAR(self->ring);
    Py_CLEAR(self->data);
    Py_CLEAR(self->words);
    if (ringcore_ring_fields(ring, &self->data, &self->words, &self->capacity, &self->max_chunk,
                    &self->readers) < 0)
        return -1;
    Py_INCREF(ring);
    self->ring = ring;
    self->seq = 0;
    self->limit = 0;
    return 0;
}

static int
writer_traverse(WriterCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ring);
    Py_VISIT(self->data);
    Py_VISIT(self->words);
    return 0;
}

static int
writer_clear(WriterCore *self)
{
    Py_CLEAR(self->ring);
    Py_CLEAR(self->data);
    Py_CLEAR(self->words);
    return 0;
}

static void
writer_dealloc(WriterCore *self)
{
    PyObject_GC_UnTrack(self);
    writer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Room for a record of ``record_bytes`` (shm_ring_writer.py's _reserve): its offset and the
 * write position after it, having left a WRAP record in the tail when it does not fit
 * before the end; 0 if the readers have not made room yet. */
static int
writer_reserve(WriterCore *self, Mem *m, uint64_t record_bytes, uint64_t *offset_out,
               uint64_t *end_out)
{
    uint64_t *words = (uint64_t *)m->words.buf, capacity = (uint64_t)self->capacity;
    uint64_t size = align_line(record_bytes), pos = words[W_WRITE]; /* only we store it */
    uint64_t offset = pos % capacity, to_end = capacity - offset;
    uint64_t need = size <= to_end ? size : to_end + size;
    if (pos + need > self->limit) {
        uint64_t slowest = UINT64_MAX;
        for (Py_ssize_t i = 0; i < self->readers; i++) {
            uint64_t read = load_acquire(words + W_READ0 + 8 * i);
            if (read < slowest)
                slowest = read;
        }
        self->limit = slowest + capacity;
        if (pos + need > self->limit)
            return 0;
    }
    if (size > to_end) {
        self->seq++;
        write_record((char *)m->data.buf + offset, (uint32_t)(to_end - RECORD_SIZE), KIND_WRAP, 0,
                     self->seq, 0);
        *offset_out = 0;
        *end_out = pos + to_end + size;
    } else {
        *offset_out = offset;
        *end_out = pos + size;
    }
    return 1;
}

static void
writer_publish(Mem *m, uint64_t end)
{
    uint64_t *words = (uint64_t *)m->words.buf;
    struct timespec now;
    /* Before the position, like the record: time.perf_counter_ns's clock. */
    clock_gettime(CLOCK_MONOTONIC, &now);
    words[W_PUBLISHED] = (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec;
    store_release(words + W_WRITE, end); /* the record's bytes before the position */
}

/* The frames of a message, as pointers and lengths (bytes directly, anything else through
 * its buffer, which must be contiguous), and the sequence they came from. */
typedef struct {
    PyObject *fast; /* the frames as a list or tuple (PySequence_Fast), held for the call */
    Py_ssize_t count;
    const char *small_ptr[SMALL];
    Py_ssize_t small_len[SMALL];
    Py_buffer small_buf[SMALL];
    char small_held[SMALL];
    const char **ptr;
    Py_ssize_t *len;
    Py_buffer *buf;
    char *held;
    PyObject *copies; /* contiguous copies of strided frames (a list), or NULL */
    uint64_t total;
} Parts;

static void
parts_release(Parts *p, Py_ssize_t upto)
{
    for (Py_ssize_t i = 0; i < upto; i++)
        if (p->held[i])
            PyBuffer_Release(&p->buf[i]);
    Py_CLEAR(p->copies);
    Py_CLEAR(p->fast);
    if (p->ptr != p->small_ptr) {
        PyMem_Free(p->ptr);
        PyMem_Free(p->len);
        PyMem_Free(p->buf);
        PyMem_Free(p->held);
    }
}

/* The parts of the sequence ``seq`` (``what``: the TypeError if it is none), at most
 * ``max_count`` of them (0: any number; checked before any frame is looked at). On
 * failure nothing is held; on success parts_release(p, p->count) lets go of all of it. */
static int
parts_get(PyObject *seq, const char *what, Py_ssize_t max_count, Parts *p)
{
    Py_ssize_t count;
    p->total = 0;
    p->copies = NULL;
    p->ptr = p->small_ptr; /* nothing to free in parts_release until allocated */
    if (!(p->fast = PySequence_Fast(seq, what)))
        return -1;
    PyObject *fast = p->fast;
    count = p->count = PySequence_Fast_GET_SIZE(fast);
    if (max_count && count > max_count) {
        PyErr_Format(PyExc_ValueError, "a message has at most %zd frames", max_count);
        parts_release(p, 0);
        return -1;
    }
    if (count <= SMALL) {
        p->ptr = p->small_ptr;
        p->len = p->small_len;
        p->buf = p->small_buf;
        p->held = p->small_held;
    } else {
        p->ptr = PyMem_Malloc(sizeof(char *) * count);
        p->len = PyMem_Malloc(sizeof(Py_ssize_t) * count);
        p->buf = PyMem_Malloc(sizeof(Py_buffer) * count);
        p->held = PyMem_Malloc(count);
        if (!p->ptr || !p->len || !p->buf || !p->held) {
            PyMem_Free(p->ptr);
            PyMem_Free(p->len);
            PyMem_Free(p->buf);
            PyMem_Free(p->held);
            p->ptr = p->small_ptr; /* nothing to free in parts_release */
            parts_release(p, 0);
            PyErr_NoMemory();
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *part = PySequence_Fast_GET_ITEM(fast, i);
        p->held[i] = 0;
        if (PyBytes_CheckExact(part)) {
            p->ptr[i] = PyBytes_AS_STRING(part);
            p->len[i] = PyBytes_GET_SIZE(part);
        } else {
            if (PyObject_GetBuffer(part, &p->buf[i], PyBUF_SIMPLE) < 0) {
                /* Strided (not contiguous): its bytes in order, as the Python writer's
                 * memoryview assignment writes them. */
                PyObject *copy;
                if (!PyErr_ExceptionMatches(PyExc_BufferError)) {
                    parts_release(p, i);
                    return -1;
                }
                PyErr_Clear();
                if ((p->copies == NULL && !(p->copies = PyList_New(0)))
                        || !(copy = PyBytes_FromObject(part))) {
                    parts_release(p, i);
                    return -1;
                }
                if (PyList_Append(p->copies, copy) < 0) {
                    Py_DECREF(copy);
                    parts_release(p, i);
                    return -1;
                }
                Py_DECREF(copy); /* the list holds it for the call */
                if (PyObject_GetBuffer(copy, &p->buf[i], PyBUF_SIMPLE) < 0) {
                    parts_release(p, i);
                    return -1;
                }
            }
            p->held[i] = 1;
            p->ptr[i] = p->buf[i].buf;
            p->len[i] = p->buf[i].len;
        }
        p->total += (uint64_t)p->len[i];
    }
    return 0;
}

static void
parts_copy(const Parts *p, char *to)
{
    for (Py_ssize_t i = 0; i < p->count; i++) {
        memcpy(to, p->ptr[i], p->len[i]);
        to += p->len[i];
    }
}

static inline int
writer_mem(WriterCore *self, Mem *m)
{
    return ringcore_mem_get(self->data, self->words, self->capacity, self->readers, 1, m);
}

static int
parse_targets(PyObject *value, uint64_t *targets)
{
    unsigned long long t = PyLong_AsUnsignedLongLong(value);
    if (t == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *targets = t;
    return 0;
}

/* One record of ``body`` bytes, written and published: the frame count and lengths first
 * when ``prefixed`` (a whole message), then ``p``'s bytes. Py_True; Py_False (nothing
 * written) if it does not fit now; NULL with an exception set. */
static PyObject *
writer_put(WriterCore *self, uint64_t body, uint16_t flags, uint64_t targets, const Parts *p,
           int prefixed)
{
    PyObject *result = Py_False;
    uint64_t offset, end;
    Mem m;
    if (writer_mem(self, &m) < 0)
        return NULL;
    if (writer_reserve(self, &m, RECORD_SIZE + body, &offset, &end)) {
        char *at = (char *)m.data.buf + offset;
        self->seq++;
        write_record(at, (uint32_t)body, KIND_MESSAGE, flags, self->seq, targets);
        at += RECORD_SIZE;
        if (prefixed) {
            uint32_t count = (uint32_t)p->count;
            memcpy(at, &count, 4);
            at += 4;
            for (Py_ssize_t i = 0; i < p->count; i++) {
                uint32_t n = (uint32_t)p->len[i];
                memcpy(at, &n, 4);
                at += 4;
            }
        }
        parts_copy(p, at);
        writer_publish(&m, end);
        result = Py_True;
    }
    ringcore_mem_release(&m);
    Py_INCREF(result);
    return result;
}

/* try_write_message(frames, targets, lane=0): ``frames`` as one record, written and
 * published: True; False (nothing written) if it does not fit now; None if it is larger
 * than a quarter of the ring (the caller cuts it into chunks). */
static PyObject *
writer_try_write_message(WriterCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *result;
    Parts p;
    uint64_t targets, body;
    long lane = 0;
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "try_write_message(frames, targets, lane=0)");
        return NULL;
    }
    if (parse_targets(args[1], &targets) < 0)
        return NULL;
    if (nargs == 3 && (lane = PyLong_AsLong(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if (parts_get(args[0], "frames must be a sequence", MAX_FRAMES, &p) < 0)
        return NULL;
    body = 4 * ((uint64_t)p.count + 1) + p.total;
    if (body > (uint64_t)self->max_chunk) {
        result = Py_None;
        Py_INCREF(result);
    } else {
        result = writer_put(self, body, FIRST | LAST | (lane ? LANE1 : 0), targets, &p, 1);
    }
    parts_release(&p, p.count);
    return result;
}

/* try_write(parts, body, flags, targets): one record of ``parts`` (``body`` bytes in all),
 * written and published: True; False (nothing written) if it does not fit now. */
static PyObject *
writer_try_write(WriterCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *result = NULL;
    Parts p;
    Py_ssize_t body;
    long flags;
    uint64_t targets;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "try_write(parts, body, flags, targets)");
        return NULL;
    }
    if ((body = PyLong_AsSsize_t(args[1])) == -1 && PyErr_Occurred())
        return NULL;
    if ((flags = PyLong_AsLong(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if (parse_targets(args[3], &targets) < 0)
        return NULL;
    if (body < 0 || body > self->max_chunk) {
        PyErr_Format(PyExc_ValueError,
                     "a record body of %zd bytes exceeds %zd; use message_records", body,
                     self->max_chunk);
        return NULL;
    }
    if (flags < 0 || flags > 0xFFFF) {
        PyErr_Format(PyExc_ValueError, "record flags %ld out of range", flags);
        return NULL;
    }
    if (parts_get(args[0], "parts must be a sequence", 0, &p) < 0)
        return NULL;
    if (p.total != (uint64_t)body) /* never write past the record */
        PyErr_Format(PyExc_ValueError, "parts of %llu bytes for a record body of %zd",
                     (unsigned long long)p.total, body);
    else
        result = writer_put(self, (uint64_t)body, (uint16_t)flags, targets, &p, 0);
    parts_release(&p, p.count);
    return result;
}

static PyMethodDef writer_methods[] = {
    {"try_write_message", (PyCFunction)(void (*)(void))writer_try_write_message, METH_FASTCALL,
     "frames as one record, written and published: True; False if it does not fit now; "
     "None if larger than a quarter of the ring."},
    {"try_write", (PyCFunction)(void (*)(void))writer_try_write, METH_FASTCALL,
     "One record of parts, written and published; False if it does not fit now."},
    {NULL},
};

static PyMemberDef writer_members[] = {
    {"ring", T_OBJECT, offsetof(WriterCore, ring), READONLY, "the ShmRing"},
    {NULL},
};

PyTypeObject WriterCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "actorexec.runtime.transport._ringcore.WriterCore",
    .tp_doc = "The writer of a ring (compiled; see shm_ring_writer.py).",
    .tp_basicsize = sizeof(WriterCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)writer_init,
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_traverse = (traverseproc)writer_traverse,
    .tp_clear = (inquiry)writer_clear,
    .tp_methods = writer_methods,
    .tp_members = writer_members,
};
