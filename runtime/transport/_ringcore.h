/* What the ring's compiled core shares between its files (_ringcore.c has why it exists,
 * the reader and the writer are _ringcore_reader.c and _ringcore_writer.c): the layout's
 * constants (shm_ring.py), the record header, the ordered word accesses, and taking the
 * ring's memory for one call. */
#ifndef ACTOREXEC_RINGCORE_H
#define ACTOREXEC_RINGCORE_H

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

/* Raises RingCorrupt (registered from Python) with a formatted message; returns NULL. */
PyObject *ringcore_corrupt(const char *format, ...);

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

/* The ring's two memoryviews, taken for one call. */
typedef struct {
    Py_buffer data, words;
} Mem;

/* The ring's memory for one call (data, and the header of ``readers`` readers), checked
 * against the layout; -1 with an exception set if it cannot be had. */
int ringcore_mem_get(PyObject *data, PyObject *words, Py_ssize_t capacity, Py_ssize_t readers,
                     int writable_data, Mem *m);
void ringcore_mem_release(Mem *m);
/* A ShmRing's data and words views and its shape, checked. */
int ringcore_ring_fields(PyObject *ring, PyObject **data, PyObject **words,
                         Py_ssize_t *capacity, Py_ssize_t *max_chunk, Py_ssize_t *readers);

extern PyTypeObject ReaderCoreType;
extern PyTypeObject WriterCoreType;

#endif
