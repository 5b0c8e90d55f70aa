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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the ring's layout is little-endian and this core reads it natively"
#endif

/* The layout (shm_ring.py); shm_ring_compiled.py checks these against Python's. */
#define LAYOUT_VERSION 3
#define LINE 64
#define RECORD_SIZE 24
#define W_WRITE 8
#define W_PUBLISHED 9
#define W_READ0 24
#define KIND_MESSAGE 1
#define KIND_WRAP 2
#define FIRST 1
#define LAST 2
#define CHUNK 4
#define LANE1 8
#define MAX_FRAMES 4096
#define SMALL 16 /* frames handled without a heap allocation */

static PyObject *corrupt_error = NULL; /* RingCorrupt, registered from Python */

static PyObject *
corrupt(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    PyErr_FormatV(corrupt_error ? corrupt_error : PyExc_ValueError, format, args);
    va_end(args);
    return NULL;
}

static inline uint64_t
load_acquire(const uint64_t *word)
{
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

static inline void
store_release(uint64_t *word, uint64_t value)
{
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}

static inline uint64_t
align_line(uint64_t n)
{
    return (n + LINE - 1) & ~(uint64_t)(LINE - 1);
}

typedef struct {
    uint32_t body;
    uint16_t kind, flags;
    uint64_t seq, targets;
} Record;

static inline void
read_record(const char *at, Record *r)
{
    memcpy(&r->body, at, 4);
    memcpy(&r->kind, at + 4, 2);
    memcpy(&r->flags, at + 6, 2);
    memcpy(&r->seq, at + 8, 8);
    memcpy(&r->targets, at + 16, 8);
}

static inline void
write_record(char *at, uint32_t body, uint16_t kind, uint16_t flags, uint64_t seq,
             uint64_t targets)
{
    memcpy(at, &body, 4);
    memcpy(at + 4, &kind, 2);
    memcpy(at + 6, &flags, 2);
    memcpy(at + 8, &seq, 8);
    memcpy(at + 16, &targets, 8);
}

/* The ring's two memoryviews, taken for one call. */
typedef struct {
    Py_buffer data, words;
} Mem;

static int
mem_get(PyObject *data, PyObject *words, Py_ssize_t capacity, Py_ssize_t nwords,
        int writable_data, Mem *m)
{
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

static void
mem_release(Mem *m)
{
    PyBuffer_Release(&m->data);
    PyBuffer_Release(&m->words);
}

static int
ring_fields(PyObject *ring, PyObject **data, PyObject **words, Py_ssize_t *capacity,
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

/* ---- the reading end -------------------------------------------------------- */

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
    if (ring_fields(ring, &self->data, &self->words, &self->capacity, &self->max_chunk,
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
    if (mem_get(self->data, self->words, self->capacity, W_READ0 + 8 * self->readers, 0, &m) < 0)
        return -1;
    self->pos = load_acquire((uint64_t *)m.words.buf + self->slot);
    self->seq = 0;
    mem_release(&m);
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
    if (self->data == NULL) {
        PyErr_SetString(PyExc_ValueError, "the reader was not initialised");
        return -1;
    }
    return mem_get(self->data, self->words, self->capacity, W_READ0 + 8 * self->readers, 0, m);
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
        return corrupt("message body without a frame count");
    memcpy(&count, base + start, 4);
    if (count < 1 || count > MAX_FRAMES || body < 4 * ((Py_ssize_t)count + 1))
        return corrupt("message body with %u frames", (unsigned)count);
    lengths = count <= SMALL ? small : PyMem_Malloc(sizeof(uint32_t) * count);
    if (lengths == NULL)
        return PyErr_NoMemory();
    memcpy(lengths, base + start + 4, sizeof(uint32_t) * count); /* read once */
    total = 4 * ((uint64_t)count + 1);
    for (uint32_t i = 0; i < count; i++)
        total += lengths[i];
    if (total != (uint64_t)body) {
        corrupt("frame lengths do not add up to the message body");
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
    mem_release(&m);
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
        mem_release(&m);
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
    mem_release(&m);
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
    mem_release(&m);
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
        mem_release(&m);
        Py_RETURN_NONE;
    }
    if (end - self->pos > capacity || end < self->pos) {
        corrupt("ring write position %llu is not within one ring of read position %llu",
                (unsigned long long)end, (unsigned long long)self->pos);
        goto done;
    }
    while (self->pos != end) {
        uint64_t offset = self->pos % capacity, start;
        uint16_t flags;
        Record r;
        if (offset % LINE) {
            corrupt("record at unaligned offset %llu", (unsigned long long)offset);
            goto done;
        }
        read_record(data + offset, &r);
        flags = r.flags & ~LANE1;
        if (r.seq != self->seq + 1) {
            corrupt("record sequence %llu after %llu", (unsigned long long)r.seq,
                    (unsigned long long)self->seq);
            goto done;
        }
        if (r.kind == KIND_WRAP) {
            if (offset + RECORD_SIZE + r.body != capacity) {
                corrupt("a WRAP record that does not reach the end of the ring");
                goto done;
            }
        } else if (r.kind != KIND_MESSAGE
                   || !(flags == (FIRST | LAST) || flags == (CHUNK | FIRST) || flags == CHUNK
                        || flags == (CHUNK | LAST))) {
            corrupt("record of unknown kind %u or flags %u", (unsigned)r.kind, (unsigned)r.flags);
            goto done;
        } else if (offset + RECORD_SIZE + r.body > capacity
                   || r.body > (uint64_t)self->max_chunk) {
            corrupt("record body of %u bytes overruns the ring", (unsigned)r.body);
            goto done;
        }
        self->seq = r.seq;
        self->pos += r.kind == KIND_WRAP ? capacity - offset : align_line(RECORD_SIZE + r.body);
        if (self->pos > end) { /* never published: the record's length is wrong */
            corrupt("a record that ends past the ring's write position");
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
                corrupt("a new chunked message began inside another");
                goto done;
            }
            if (!(self->chunks = PyByteArray_FromStringAndSize(data + start, r.body)))
                goto done;
        } else if (self->chunks == NULL) {
            corrupt("a chunk arrived without the first chunk of its message");
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
    mem_release(&m);
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
    mem_release(&m);
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

static PyTypeObject ReaderCoreType = {
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

/* ---- the writer --------------------------------------------------------------- */

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
    if (ring_fields(ring, &self->data, &self->words, &self->capacity, &self->max_chunk,
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
 * its buffer, which must be contiguous). */
typedef struct {
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
    if (p->ptr != p->small_ptr) {
        PyMem_Free(p->ptr);
        PyMem_Free(p->len);
        PyMem_Free(p->buf);
        PyMem_Free(p->held);
    }
}

static int
parts_get(PyObject *fast, Parts *p)
{
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    p->count = count;
    p->total = 0;
    p->copies = NULL;
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
    if (self->data == NULL) {
        PyErr_SetString(PyExc_ValueError, "the writer was not initialised");
        return -1;
    }
    return mem_get(self->data, self->words, self->capacity, W_READ0 + 8 * self->readers, 1, m);
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

/* try_write_message(frames, targets, lane=0): ``frames`` as one record, written and
 * published: True; False (nothing written) if it does not fit now; None if it is larger
 * than a quarter of the ring (the caller cuts it into chunks). */
static PyObject *
writer_try_write_message(WriterCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *fast, *result = NULL;
    Parts p;
    Mem m;
    uint64_t targets, body, offset, end;
    long lane = 0;
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "try_write_message(frames, targets, lane=0)");
        return NULL;
    }
    if (parse_targets(args[1], &targets) < 0)
        return NULL;
    if (nargs == 3 && (lane = PyLong_AsLong(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if (!(fast = PySequence_Fast(args[0], "frames must be a sequence")))
        return NULL;
    if (PySequence_Fast_GET_SIZE(fast) > MAX_FRAMES) {
        PyErr_Format(PyExc_ValueError, "a message has at most %d frames", MAX_FRAMES);
        Py_DECREF(fast);
        return NULL;
    }
    if (parts_get(fast, &p) < 0) {
        Py_DECREF(fast);
        return NULL;
    }
    body = 4 * ((uint64_t)p.count + 1) + p.total;
    if (body > (uint64_t)self->max_chunk) {
        result = Py_None;
        Py_INCREF(result);
        goto parts_done;
    }
    if (writer_mem(self, &m) < 0)
        goto parts_done;
    if (!writer_reserve(self, &m, RECORD_SIZE + body, &offset, &end)) {
        result = Py_False;
    } else {
        char *at = (char *)m.data.buf + offset;
        uint32_t count = (uint32_t)p.count;
        self->seq++;
        write_record(at, (uint32_t)body, KIND_MESSAGE, FIRST | LAST | (lane ? LANE1 : 0),
                     self->seq, targets);
        at += RECORD_SIZE;
        memcpy(at, &count, 4);
        at += 4;
        for (Py_ssize_t i = 0; i < p.count; i++) {
            uint32_t n = (uint32_t)p.len[i];
            memcpy(at, &n, 4);
            at += 4;
        }
        parts_copy(&p, at);
        writer_publish(&m, end);
        result = Py_True;
    }
    Py_INCREF(result);
    mem_release(&m);
parts_done:
    parts_release(&p, p.count);
    Py_DECREF(fast);
    return result;
}

/* try_write(parts, body, flags, targets): one record of ``parts`` (``body`` bytes in all),
 * written and published: True; False (nothing written) if it does not fit now. */
static PyObject *
writer_try_write(WriterCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *fast, *result = NULL;
    Parts p;
    Mem m;
    Py_ssize_t body;
    long flags;
    uint64_t targets, offset, end;
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
    if (!(fast = PySequence_Fast(args[0], "parts must be a sequence")))
        return NULL;
    if (parts_get(fast, &p) < 0) {
        Py_DECREF(fast);
        return NULL;
    }
    if (p.total != (uint64_t)body) { /* never write past the record */
        PyErr_Format(PyExc_ValueError, "parts of %llu bytes for a record body of %zd",
                     (unsigned long long)p.total, body);
        goto parts_done;
    }
    if (writer_mem(self, &m) < 0)
        goto parts_done;
    if (!writer_reserve(self, &m, RECORD_SIZE + (uint64_t)body, &offset, &end)) {
        result = Py_False;
    } else {
        char *at = (char *)m.data.buf + offset;
        self->seq++;
        write_record(at, (uint32_t)body, KIND_MESSAGE, (uint16_t)flags, self->seq, targets);
        parts_copy(&p, at + RECORD_SIZE);
        writer_publish(&m, end);
        result = Py_True;
    }
    Py_INCREF(result);
    mem_release(&m);
parts_done:
    parts_release(&p, p.count);
    Py_DECREF(fast);
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

static PyTypeObject WriterCoreType = {
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
