/* The reading end of a ring, compiled (shm_ring_reader.py is the same in Python). */
#include "_ringcore.h"

typedef struct {
    PyObject_HEAD
    PyObject *ring, *data, *words;
    PyObject *chunks; /* a chunked message being joined (bytearray), or NULL */
    Py_ssize_t capacity, max_chunk, readers, index, slot;
    unsigned long long bit;
    uint64_t pos, seq;
} ReaderCore;

static int
reader_init(ReaderCore *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ring", "index", NULL};
    PyObject *ring;
    Py_ssize_t index;
    Mem m;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "On", kwlist, &ring, &index))
        return -1;
    Py_CLEAR(self->ring);
    Py_CLEAR(self->data);
    Py_CLEAR(self->words);
    Py_CLEAR(self->chunks);
    if (ringcore_ring_fields(ring, &self->data, &self->words, &self->capacity, &self->max_chunk,
                    &self->readers) < 0)
        return -1;
    if (index < 0 || index >= self->readers) {
        PyErr_Format(PyExc_ValueError, "reader index %zd outside 0..%zd", index,
                     self->readers - 1);
        return -1;
    }
    Py_INCREF(ring);
    self->ring = ring;
    self->index = index;
    self->bit = 1ULL << index;
    self->slot = W_READ0 + 8 * index;
    if (ringcore_mem_get(self->data, self->words, self->capacity, self->readers, 0, &m) < 0)
        return -1;
    self->pos = load_acquire((uint64_t *)m.words.buf + self->slot);
    self->seq = 0;
    ringcore_mem_release(&m);
    return 0;
}

static int
reader_traverse(ReaderCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ring);
    Py_VISIT(self->data);
    Py_VISIT(self->words);
    Py_VISIT(self->chunks);
    return 0;
}

static int
reader_clear(ReaderCore *self)
{
    Py_CLEAR(self->ring);
    Py_CLEAR(self->data);
    Py_CLEAR(self->words);
    Py_CLEAR(self->chunks);
    return 0;
}

static void
reader_dealloc(ReaderCore *self)
{
    PyObject_GC_UnTrack(self);
    reader_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static inline int
reader_mem(ReaderCore *self, Mem *m)
{
    return ringcore_mem_get(self->data, self->words, self->capacity, self->readers, 0, m);
}

/* The frames of a message body at ``base + start`` (``body`` bytes) of ``source``'s memory,
 * as slices of ``source``. */
static PyObject *
frames_of(PyObject *source, const char *base, Py_ssize_t start, Py_ssize_t body)
{
    uint32_t count, small[SMALL], *lengths;
    uint64_t total;
    Py_ssize_t at;
    PyObject *frames = NULL;
    if (body < 4)
        return ringcore_corrupt("message body without a frame count");
    memcpy(&count, base + start, 4);
    if (count < 1 || count > MAX_FRAMES || body < 4 * ((Py_ssize_t)count + 1))
        return ringcore_corrupt("message body with %u frames", (unsigned)count);
    lengths = count <= SMALL ? small : PyMem_Malloc(sizeof(uint32_t) * count);
    if (lengths == NULL)
        return PyErr_NoMemory();
    memcpy(lengths, base + start + 4, sizeof(uint32_t) * count); /* read once */
    total = 4 * ((uint64_t)count + 1);
    for (uint32_t i = 0; i < count; i++)
        total += lengths[i];
    if (total != (uint64_t)body) {
        ringcore_corrupt("frame lengths do not add up to the message body");
        goto done;
    }
    if (!(frames = PyList_New(count)))
        goto done;
    at = start + 4 * ((Py_ssize_t)count + 1);
    for (uint32_t i = 0; i < count; i++) {
        PyObject *frame = PySequence_GetSlice(source, at, at + lengths[i]);
        if (frame == NULL) {
            Py_CLEAR(frames);
            goto done;
        }
        PyList_SET_ITEM(frames, i, frame);
        at += lengths[i];
    }
done:
    if (lengths != small)
        PyMem_Free(lengths);
    return frames;
}

static PyObject *
reader_pending(ReaderCore *self, PyObject *unused)
{
    Mem m;
    uint64_t end;
    if (reader_mem(self, &m) < 0)
        return NULL;
    end = load_acquire((uint64_t *)m.words.buf + W_WRITE);
    ringcore_mem_release(&m);
    return PyBool_FromLong(end != self->pos);
}

static PyObject *
reader_next_lane(ReaderCore *self, PyObject *unused)
{
    Mem m;
    Record r;
    uint64_t offset;
    long lane;
    if (reader_mem(self, &m) < 0)
        return NULL;
    if (load_acquire((uint64_t *)m.words.buf + W_WRITE) == self->pos) {
        ringcore_mem_release(&m);
        Py_RETURN_NONE;
    }
    offset = self->pos % (uint64_t)self->capacity;
    if (offset + RECORD_SIZE > (uint64_t)self->capacity) {
        lane = -1; /* a hint only: the read itself will say what is wrong */
    } else {
        read_record((const char *)m.data.buf + offset, &r);
        lane = (r.kind != KIND_MESSAGE || !(r.targets & self->bit)) ? -1
               : (r.flags & LANE1) ? 1 : 0;
    }
    ringcore_mem_release(&m);
    return PyLong_FromLong(lane);
}

static inline void
reader_hand_back(ReaderCore *self, Mem *m)
{
    store_release((uint64_t *)m->words.buf + self->slot, self->pos);
}

static PyObject *
reader_release(ReaderCore *self, PyObject *unused)
{
    Mem m;
    if (reader_mem(self, &m) < 0)
        return NULL;
    reader_hand_back(self, &m);
    ringcore_mem_release(&m);
    Py_RETURN_NONE;
}

/* The next message for this reader (a list of frames: views of the ring, valid until
 * release), or None; skips and hands back records for others. */
static PyObject *
reader_next_message(ReaderCore *self, PyObject *unused)
{
    Mem m;
    PyObject *result = NULL;
    uint64_t end, capacity = (uint64_t)self->capacity;
    const char *data;
    if (reader_mem(self, &m) < 0)
        return NULL;
    data = (const char *)m.data.buf;
    end = load_acquire((uint64_t *)m.words.buf + W_WRITE);
    if (end == self->pos) {
        ringcore_mem_release(&m);
        Py_RETURN_NONE;
    }
    if (end - self->pos > capacity || end < self->pos) {
        ringcore_corrupt("ring write position %llu is not within one ring of read position %llu",
                (unsigned long long)end, (unsigned long long)self->pos);
        goto done;
    }
    while (self->pos != end) {
        uint64_t offset = self->pos % capacity, start;
        uint16_t flags;
        Record r;
        if (offset % LINE) {
            ringcore_corrupt("record at unaligned offset %llu", (unsigned long long)offset);
            goto done;
        }
        read_record(data + offset, &r);
        flags = r.flags & ~LANE1;
        if (r.seq != self->seq + 1) {
            ringcore_corrupt("record sequence %llu after %llu", (unsigned long long)r.seq,
                    (unsigned long long)self->seq);
            goto done;
        }
        if (r.kind == KIND_WRAP) {
            if (offset + RECORD_SIZE + r.body != capacity) {
                ringcore_corrupt("a WRAP record that does not reach the end of the ring");
                goto done;
            }
        } else if (r.kind != KIND_MESSAGE
                   || !(flags == (FIRST | LAST) || flags == (CHUNK | FIRST) || flags == CHUNK
                        || flags == (CHUNK | LAST))) {
            ringcore_corrupt("record of unknown kind %u or flags %u", (unsigned)r.kind, (unsigned)r.flags);
            goto done;
        } else if (offset + RECORD_SIZE + r.body > capacity
                   || r.body > (uint64_t)self->max_chunk) {
            ringcore_corrupt("record body of %u bytes overruns the ring", (unsigned)r.body);
            goto done;
        }
        self->seq = r.seq;
        self->pos += r.kind == KIND_WRAP ? capacity - offset : align_line(RECORD_SIZE + r.body);
        if (self->pos > end) { /* never published: the record's length is wrong */
            ringcore_corrupt("a record that ends past the ring's write position");
            goto done;
        }
        if (r.kind == KIND_WRAP || !(r.targets & self->bit)) {
            reader_hand_back(self, &m);
            continue;
        }
        start = offset + RECORD_SIZE;
        if (flags == (FIRST | LAST)) {
            result = frames_of(self->data, data, (Py_ssize_t)start, (Py_ssize_t)r.body);
            goto done;
        }
        if (flags & FIRST) {
            if (self->chunks != NULL) {
                ringcore_corrupt("a new chunked message began inside another");
                goto done;
            }
            if (!(self->chunks = PyByteArray_FromStringAndSize(data + start, r.body)))
                goto done;
        } else if (self->chunks == NULL) {
            ringcore_corrupt("a chunk arrived without the first chunk of its message");
            goto done;
        } else {
            Py_ssize_t had = PyByteArray_GET_SIZE(self->chunks);
            if (PyByteArray_Resize(self->chunks, had + r.body) < 0)
                goto done;
            memcpy(PyByteArray_AS_STRING(self->chunks) + had, data + start, r.body);
        }
        reader_hand_back(self, &m);
        if (flags & LAST) {
            PyObject *whole = self->chunks, *view;
            self->chunks = NULL;
            view = PyMemoryView_FromObject(whole);
            if (view != NULL) {
                result = frames_of(view, PyByteArray_AS_STRING(whole), 0,
                                   PyByteArray_GET_SIZE(whole));
                Py_DECREF(view);
            }
            Py_DECREF(whole);
            goto done;
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    ringcore_mem_release(&m);
    return result;
}

/* Releases a delivered message's frames (a view kept past this is a bug: made loud), then
 * hands the records back to the writer. */
static PyObject *
reader_done_with(ReaderCore *self, PyObject *frames)
{
    PyObject *fast = PySequence_Fast(frames, "frames must be a sequence");
    Mem m;
    if (fast == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        PyObject *frame = PySequence_Fast_GET_ITEM(fast, i), *res;
        if (!PyMemoryView_Check(frame))
            continue;
        res = PyObject_CallMethod(frame, "release", NULL);
        if (res == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_BufferError)) {
                Py_DECREF(fast);
                return NULL;
            }
            PyErr_Clear(); /* still exported elsewhere: released with its last export */
        }
        Py_XDECREF(res);
    }
    Py_DECREF(fast);
    if (reader_mem(self, &m) < 0)
        return NULL;
    reader_hand_back(self, &m);
    ringcore_mem_release(&m);
    Py_RETURN_NONE;
}

static PyMethodDef reader_methods[] = {
    {"pending", (PyCFunction)reader_pending, METH_NOARGS,
     "Has the writer published anything this reader has not consumed?"},
    {"next_lane", (PyCFunction)reader_next_lane, METH_NOARGS,
     "Without consuming: None, or the next record's lane (0 or 1), or -1 (a hint)."},
    {"next_message", (PyCFunction)reader_next_message, METH_NOARGS,
     "The next message's frames (views of the ring until release), or None."},
    {"release", (PyCFunction)reader_release, METH_NOARGS,
     "Hands back everything read so far."},
    {"done_with", (PyCFunction)reader_done_with, METH_O,
     "Releases a message's frame views, then hands back everything read so far."},
    {NULL},
};

static PyMemberDef reader_members[] = {
    {"ring", T_OBJECT, offsetof(ReaderCore, ring), READONLY, "the ShmRing"},
    {"index", T_PYSSIZET, offsetof(ReaderCore, index), READONLY, "this reader's index"},
    {"slot", T_PYSSIZET, offsetof(ReaderCore, slot), READONLY,
     "the word of this reader's read position"},
    {"bit", T_ULONGLONG, offsetof(ReaderCore, bit), READONLY, "this reader's target bit"},
    {NULL},
};

PyTypeObject ReaderCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "actorexec.runtime.transport._ringcore.ReaderCore",
    .tp_doc = "Reader ``index`` of a ring (compiled; see shm_ring_reader.py).",
    .tp_basicsize = sizeof(ReaderCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_traverse = (traverseproc)reader_traverse,
    .tp_clear = (inquiry)reader_clear,
    .tp_methods = reader_methods,
    .tp_members = reader_members,
};
