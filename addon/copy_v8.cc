// Bulk copy between guest memories (a measured hot-path helper, bench/NOTES.md)
//
// A worker registers the SharedArrayBuffers it copies between and then hands over a
// whole burst of copies in one call: one N-API crossing per burst instead of a
// Buffer.copy per packet. The table holds a reference on each backing store, so a
// registered mapping cannot be unmapped under a pending copy; it is per thread because
// every worker is its own isolate.
//
// V8 internals (see v8_bridge.h): the table holds v8::BackingStore references, and the
// per-burst form (copyBind / copyRun) is a V8 function callback.

#include <errno.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "args.h"
#include "functions.h"
#include "hot_tls.h"
#include "v8_bridge.h"

namespace vhostfwd {

// This thread's tables (hot_tls.h), defined here once.
HOT_TLS std::vector<CopyRegion>* t_copy_regions = nullptr;
HOT_TLS std::vector<CopyJob>* t_copy_jobs = nullptr;
HOT_TLS std::vector<std::unique_ptr<BoundJobs>>* t_bound_jobs = nullptr;

Napi::Value CopyRegister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CopyRegion region;
  region.store = SharedArrayBufferArg(info, "copyRegister")->GetBackingStore();
  region.data = static_cast<uint8_t*>(region.store->Data());
  region.size = static_cast<uint64_t>(region.store->ByteLength());
  for (size_t i = 0; i < CopyRegions().size(); i++) {
    if (!CopyRegions()[i].store) {
      CopyRegions()[i] = std::move(region);
      return Napi::Number::New(env, static_cast<double>(i));
    }
  }
  CopyRegions().push_back(std::move(region));
  return Napi::Number::New(env, static_cast<double>(CopyRegions().size() - 1));
}

Napi::Value CopyUnregister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int id = ArgInt(info, 0, "id must be an integer");
  if (id >= 0 && static_cast<size_t>(id) < CopyRegions().size()) CopyRegions()[static_cast<size_t>(id)] = CopyRegion();
  return env.Undefined();
}

namespace {

// jobs: n x [srcId, srcOff, dstId, dstOff, len]. Every job is checked against its stores'
// lengths before any byte moves: a bad job refuses the whole batch, nothing copied.
// Returns 0, or ERANGE.
int RunCopyJobs(const double* j, size_t n) {
  std::vector<CopyRegion>& table = CopyRegions();
  const size_t regions = table.size();
  const CopyRegion* r = table.data();
  // The checks convert with one truncating instruction and compare back (no std::floor:
  // without SSE4.1 that is a libm call per field, measurable per packet: bench/NOTES.md #15).
  auto index = [](double v, uint64_t& out) {
    if (!(v >= 0 && v <= 9007199254740992.0)) return false;  // also rejects NaN
    const uint64_t u = static_cast<uint64_t>(v);
    if (static_cast<double>(u) != v) return false;
    out = u;
    return true;
  };
  std::vector<CopyJob>& jobs = *t_copy_jobs;
  if (jobs.size() < n) jobs.resize(n);
  CopyJob* out = jobs.data();
  for (size_t k = 0; k < n; k++) {
    const double* q = j + 5 * k;
    uint64_t sid, soff, did, doff, len;
    if (!index(q[0], sid) || !index(q[1], soff) || !index(q[2], did) || !index(q[3], doff) || !index(q[4], len) ||
        sid >= regions || did >= regions) {
      return ERANGE;
    }
    const CopyRegion& s = r[sid];
    const CopyRegion& d = r[did];
    if (s.data == nullptr || d.data == nullptr || len > s.size || soff > s.size - len || len > d.size || doff > d.size - len) {
      return ERANGE;
    }
    out[k] = CopyJob{s.data + soff, d.data + doff, static_cast<size_t>(len)};
  }
  for (size_t k = 0; k < n; k++) std::memmove(out[k].dst, out[k].src, out[k].len);
  return 0;
}

}  // namespace

Napi::Value CopyBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    Napi::TypeError e = Napi::TypeError::New(env, "copyBatch: expected (Float64Array, count)");
    e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
    throw e;
  }
  Napi::Float64Array jobs = info[0].As<Napi::Float64Array>();
  int n = ArgInt(info, 1, "count must be an integer");
  if (n < 0 || static_cast<size_t>(n) * 5 > jobs.ElementLength()) ThrowErrno(env, "copyBatch", EINVAL);
  const int err = RunCopyJobs(jobs.Data(), static_cast<size_t>(n));
  if (err != 0) ThrowErrno(env, "copyBatch", err);
  return env.Undefined();
}

// The per-burst form, without N-API: a V8 function callback. N-API's argument and scope
// handling cost several times what a V8 callback with integer arguments does, on a call per
// burst (bench/NOTES.md #20). The job array is bound once (copyBind), so a call
// carries two small integers, and it reports a refused batch by its return value (copyBatch
// on the same jobs then throws the named error: nothing was copied either way).

// copyBind(jobs: Float64Array) -> binding id
void CopyBind(const v8::FunctionCallbackInfo<v8::Value>& info) {
  v8::Isolate* isolate = info.GetIsolate();
  if (info.Length() < 1 || !info[0]->IsFloat64Array()) {
    ThrowV8Type(isolate, "copyBind: expected a Float64Array");
    return;
  }
  v8::Local<v8::Float64Array> a = info[0].As<v8::Float64Array>();
  size_t id = 0;
  while (id < BoundJobTable().size() && BoundJobTable()[id]->data != nullptr) id++;
  if (id == BoundJobTable().size()) BoundJobTable().push_back(std::make_unique<BoundJobs>());
  BoundJobs* b = BoundJobTable()[id].get();
  b->store = a->Buffer()->GetBackingStore();  // externalises an on-heap array: the data no longer moves
  b->data = reinterpret_cast<const double*>(static_cast<const uint8_t*>(b->store->Data()) + a->ByteOffset());
  b->length = a->Length();
  b->array.Reset(isolate, a);
  b->array.SetWeak(
      b,
      [](const v8::WeakCallbackInfo<BoundJobs>& w) {
        BoundJobs* gone = w.GetParameter();
        gone->array.Reset();
        gone->store.reset();
        gone->data = nullptr;
        gone->length = 0;
      },
      v8::WeakCallbackType::kParameter);
  info.GetReturnValue().Set(static_cast<uint32_t>(id));
}

namespace {

// The arguments (id, n) of a call over a bound array whose entries are `stride` numbers: the
// array's data and n, or null (EINVAL set as the call's return value) when the arguments are
// not two uint32, the binding is unknown or gone, or n entries do not fit the array.
const double* BoundEntries(const v8::FunctionCallbackInfo<v8::Value>& info, size_t stride, uint32_t& n) {
  if (info.Length() < 2 || !info[0]->IsUint32() || !info[1]->IsUint32()) {
    info.GetReturnValue().Set(EINVAL);
    return nullptr;
  }
  const uint32_t id = info[0].As<v8::Uint32>()->Value();
  n = info[1].As<v8::Uint32>()->Value();
  if (id >= BoundJobTable().size() || BoundJobTable()[id]->data == nullptr || static_cast<size_t>(n) * stride > BoundJobTable()[id]->length) {
    info.GetReturnValue().Set(EINVAL);
    return nullptr;
  }
  return BoundJobTable()[id]->data;
}

}  // namespace

// copyRun(id, n) -> 0 when the first n jobs of binding `id` ran, else an errno (EINVAL: bad
// id or count; ERANGE: a job out of its stores), nothing copied.
void CopyRun(const v8::FunctionCallbackInfo<v8::Value>& info) {
  uint32_t n = 0;
  const double* jobs = BoundEntries(info, 5, n);
  if (jobs != nullptr) info.GetReturnValue().Set(RunCopyJobs(jobs, n));
}

// copyPrefetch(id, count) -> 0, or EINVAL (bad id or count): a read prefetch of the cache
// line at each of the first `count` [regionId, offset] pairs of binding `id` (a Float64Array
// bound with copyBind, read two numbers a pair). A pair outside its region is skipped: a
// prefetch is a hint, and never a load of memory that is not there. Why: the bridge reads
// each frame's MACs in JS right after the frontend wrote them on its core, a miss a frame,
// and JS loads wait for each miss in turn (bench/NOTES.md #54); the prefetches of a burst,
// issued together, overlap theirs.
void CopyPrefetch(const v8::FunctionCallbackInfo<v8::Value>& info) {
  uint32_t n = 0;
  const double* j = BoundEntries(info, 2, n);
  if (j == nullptr) return;
  const std::vector<CopyRegion>& table = CopyRegions();
  for (uint32_t k = 0; k < n; k++) {
    const double rid = j[2 * k];
    const double off = j[2 * k + 1];
    // also false for NaN; the casts below are then of integers in range
    if (!(rid >= 0 && rid < static_cast<double>(table.size()) && off >= 0)) continue;
    const CopyRegion& r = table[static_cast<size_t>(rid)];
    if (r.data == nullptr || !(off < static_cast<double>(r.size))) continue;
    __builtin_prefetch(r.data + static_cast<uint64_t>(off), 0, 3);
  }
  info.GetReturnValue().Set(0);
}

}  // namespace vhostfwd
