// The per-thread tables of the per-burst hot-path helpers (bulk copy: copy_v8.cc; dirty-log
// marking: log_v8.cc), allocated and freed by the module init (vhostfwd.cc). They hold V8
// backing stores: V8 internals, see v8_bridge.h.

#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "v8_bridge.h"

namespace vhostfwd {

// The per-burst helpers' tables are per thread (one isolate per worker thread). In a
// dlopen'ed object a thread_local vector costs a __tls_get_addr call and an init-guard check
// on every access (a few per burst, seen in the worker's profile: bench/NOTES.md #31). So each table is a
// plain pointer with the initial-exec model, one %fs-relative load, allocated by Init and
// freed by its cleanup hook. That takes 40 bytes of the static TLS surplus glibc keeps for
// modules loaded later (a shortage would fail the addon's load with a named error).
//
// __thread, not thread_local, now that the tables are shared by several files: the other
// files see only the extern declaration, and for an extern thread_local the compiler, not
// knowing whether the definition has a dynamic initializer, calls through a TLS wrapper (a
// check of the _ZTH init symbol) on every access. __thread promises constant initialization
// (a null pointer here), so every file gets the plain %fs-relative load. The same macro
// declares (below) and defines (once: copy_v8.cc, log_v8.cc, vhostfwd.cc) each variable.
#define HOT_TLS __thread __attribute__((tls_model("initial-exec")))

struct CopyRegion {
  std::shared_ptr<v8::BackingStore> store;  // keeps the mapping alive while registered
  // Data() and ByteLength() cached at registration: a SharedArrayBuffer's memory never moves,
  // and calling through the PLT twice per job showed in the 1518-byte loop (bench/NOTES.md #10).
  uint8_t* data = nullptr;
  uint64_t size = 0;
};
extern HOT_TLS std::vector<CopyRegion>* t_copy_regions;  // defined in copy_v8.cc
inline std::vector<CopyRegion>& CopyRegions() { return *t_copy_regions; }

// A checked job, ready to run (RunCopyJobs checks a whole batch before it copies).
struct CopyJob {
  const uint8_t* src;
  uint8_t* dst;
  size_t len;
};
extern HOT_TLS std::vector<CopyJob>* t_copy_jobs;  // defined in copy_v8.cc

// A bound Float64Array: its backing store is held (the memory stays where it is), the array
// itself only weakly, so a job array that is collected frees its slot.
struct BoundJobs {
  v8::Global<v8::Float64Array> array;
  std::shared_ptr<v8::BackingStore> store;
  const double* data = nullptr;
  size_t length = 0;
};
extern HOT_TLS std::vector<std::unique_ptr<BoundJobs>>* t_bound_jobs;  // defined in copy_v8.cc
inline std::vector<std::unique_ptr<BoundJobs>>& BoundJobTable() { return *t_bound_jobs; }

struct BoundLog {
  v8::Global<v8::Float64Array> runs;        // weak: a collected run array frees the slot
  std::shared_ptr<v8::BackingStore> runStore;
  std::shared_ptr<v8::BackingStore> logStore;  // keeps the log mapping alive while bound
  const double* runData = nullptr;
  size_t runLength = 0;
  uint8_t* log = nullptr;
  uint64_t logBytes = 0;
};
extern HOT_TLS std::vector<std::unique_ptr<BoundLog>>* t_bound_logs;  // defined in log_v8.cc
inline std::vector<std::unique_ptr<BoundLog>>& BoundLogTable() { return *t_bound_logs; }

}  // namespace vhostfwd
