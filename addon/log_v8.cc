// Dirty-log page marking (a measured hot-path helper, bench/NOTES.md #21)
//
// A ring's burst leaves page runs [first, last] (guest page numbers, gpa >> 12) in a
// Float64Array; logRun sets their bits in the log in one call per burst. In JavaScript the
// same work (a word cache, then a load and maybe an Atomics.or per word) took about three
// times as long for a burst on scattered pages, as a frontend's mbuf pool scatters them, the
// call included (bench/NOTES.md #21). As DPDK's vhost does, bits are set
// with an atomic OR on the byte; as in DirtyLog.flush, a byte that already holds its bits is
// only loaded (the frontend clears a word with an atomic exchange before it reads the pages,
// so a bit seen set after the barrier below will be seen by a later sync with our bytes).
//
// V8 internals (see v8_bridge.h): logBind / logUnbind / logRun are V8 function callbacks,
// and a binding holds the log's and the run array's v8::BackingStores.

#include <errno.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "hot_tls.h"
#include "v8_bridge.h"

namespace vhostfwd {

// This thread's table (hot_tls.h), defined here once.
HOT_TLS std::vector<std::unique_ptr<BoundLog>>* t_bound_logs = nullptr;

namespace {

void ReleaseBoundLog(BoundLog* b) {
  b->runs.Reset();
  b->runStore.reset();
  b->logStore.reset();
  b->runData = nullptr;
  b->runLength = 0;
  b->log = nullptr;
  b->logBytes = 0;
}

}  // namespace

// logBind(log: Uint8Array, runs: Float64Array) -> binding id
void LogBind(const v8::FunctionCallbackInfo<v8::Value>& info) {
  v8::Isolate* isolate = info.GetIsolate();
  if (info.Length() < 2 || !info[0]->IsUint8Array() || !info[1]->IsFloat64Array()) {
    ThrowV8Type(isolate, "logBind: expected (Uint8Array, Float64Array)");
    return;
  }
  v8::Local<v8::Uint8Array> log = info[0].As<v8::Uint8Array>();
  v8::Local<v8::Float64Array> runs = info[1].As<v8::Float64Array>();
  size_t id = 0;
  while (id < BoundLogTable().size() && BoundLogTable()[id]->runData != nullptr) id++;
  if (id == BoundLogTable().size()) BoundLogTable().push_back(std::make_unique<BoundLog>());
  BoundLog* b = BoundLogTable()[id].get();
  b->logStore = log->Buffer()->GetBackingStore();
  b->log = static_cast<uint8_t*>(b->logStore->Data()) + log->ByteOffset();
  b->logBytes = log->ByteLength();
  b->runStore = runs->Buffer()->GetBackingStore();  // externalises an on-heap array: no longer moves
  b->runData = reinterpret_cast<const double*>(static_cast<const uint8_t*>(b->runStore->Data()) + runs->ByteOffset());
  b->runLength = runs->Length();
  b->runs.Reset(isolate, runs);
  b->runs.SetWeak(b, [](const v8::WeakCallbackInfo<BoundLog>& w) { ReleaseBoundLog(w.GetParameter()); }, v8::WeakCallbackType::kParameter);
  info.GetReturnValue().Set(static_cast<uint32_t>(id));
}

// logUnbind(id): the slot is free again, the log no longer held.
void LogUnbind(const v8::FunctionCallbackInfo<v8::Value>& info) {
  if (info.Length() < 1 || !info[0]->IsUint32()) return;
  const uint32_t id = info[0].As<v8::Uint32>()->Value();
  if (id < BoundLogTable().size()) ReleaseBoundLog(BoundLogTable()[id].get());
}

// logRun(id, n, fenced) -> pages marked (>= 0), or a negative errno with no bit written:
// -EINVAL a bad id or count, -ERANGE a run that is not 0 <= first <= last or that reaches
// past the log (DirtyLog's JavaScript path then counts and drops those pages).
// `fenced`: the caller's last act was a seq-cst store (publish() stores used->idx, an xchg
// on x86), which is then the barrier between the burst's bytes and the loads of the log.
void LogRun(const v8::FunctionCallbackInfo<v8::Value>& info) {
  if (info.Length() < 2 || !info[0]->IsUint32() || !info[1]->IsUint32()) {
    info.GetReturnValue().Set(-EINVAL);
    return;
  }
  const uint32_t id = info[0].As<v8::Uint32>()->Value();
  const uint32_t n = info[1].As<v8::Uint32>()->Value();
  if (id >= BoundLogTable().size() || BoundLogTable()[id]->runData == nullptr || static_cast<size_t>(n) * 2 > BoundLogTable()[id]->runLength) {
    info.GetReturnValue().Set(-EINVAL);
    return;
  }
  const BoundLog& b = *BoundLogTable()[id];
  const double* r = b.runData;
  const double pages = static_cast<double>(b.logBytes) * 8;
  // Checked whole before any bit moves: 0 <= first <= last < pages (NaN fails). That is all
  // safety needs: truncating a double in [0, pages) gives a byte inside the log; a fraction,
  // which the callers never make, would only mark the page it lies in.
  for (uint32_t k = 0; k < n; k++) {
    const double first = r[2 * k];
    const double last = r[2 * k + 1];
    if (!(first >= 0 && first <= last && last < pages)) {
      info.GetReturnValue().Set(-ERANGE);
      return;
    }
  }
#if defined(__x86_64__) || defined(__i386__)
  const bool fenced = info.Length() > 2 && info[2]->IsTrue();
#else
  const bool fenced = false;  // the caller's store orders nothing for our loads on weaker CPUs
#endif
  if (!fenced) __atomic_thread_fence(__ATOMIC_SEQ_CST);
  uint8_t* log = b.log;
  // OR `mask` into byte i unless it holds those bits already
  auto mark = [log](uint64_t i, uint8_t mask) {
    if ((__atomic_load_n(log + i, __ATOMIC_RELAXED) & mask) != mask) __atomic_fetch_or(log + i, mask, __ATOMIC_SEQ_CST);
  };
  uint64_t marked = 0;  // an integer sum: a double one was a 4-cycle dependency per run
  for (uint32_t k = 0; k < n; k++) {
    const uint64_t first = static_cast<uint64_t>(static_cast<int64_t>(r[2 * k]));
    const uint64_t last = static_cast<uint64_t>(static_cast<int64_t>(r[2 * k + 1]));
    marked += last - first + 1;
    const uint64_t firstByte = first >> 3;
    const uint64_t lastByte = last >> 3;
    if (firstByte == lastByte) {  // most runs: a buffer within one page, or a few in one byte
      mark(firstByte, static_cast<uint8_t>((0xffu >> (7 - (last & 7))) & (0xffu << (first & 7))));
      continue;
    }
    for (uint64_t i = firstByte; i <= lastByte; i++) {
      const unsigned lo = i == firstByte ? static_cast<unsigned>(first & 7) : 0;
      const unsigned hi = i == lastByte ? static_cast<unsigned>(last & 7) : 7;
      mark(i, static_cast<uint8_t>((0xffu >> (7 - hi)) & (0xffu << lo)));
    }
  }
  // a Smi when it fits (a double return allocates a HeapNumber: v8::Number::New in the profile)
  if (marked <= 0x7fffffff) info.GetReturnValue().Set(static_cast<int32_t>(marked));
  else info.GetReturnValue().Set(static_cast<double>(marked));
}

}  // namespace vhostfwd
