// Threads: CPU affinity of the calling thread (a worker pins only itself) and its tid.
// N-API only.

#include <errno.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "args.h"
#include "functions.h"

namespace vhostfwd {

namespace {

pid_t Tid() { return static_cast<pid_t>(::syscall(SYS_gettid)); }

}  // namespace

Napi::Value SetAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowType(env, "cpus must be an array of numbers");
  Napi::Array arr = info[0].As<Napi::Array>();
  uint32_t n = arr.Length();
  long max_cpu = -1;
  for (uint32_t i = 0; i < n; i++) {
    int32_t c = ToInt32Exact(env, arr.Get(i), "cpus must be integers");
    if (c < 0 || c >= 65536) ThrowErrno(env, "sched_setaffinity", EINVAL, "cpu " + std::to_string(c));
    if (c > max_cpu) max_cpu = c;
  }
  // Dynamically sized so machines with more than CPU_SETSIZE (1024) cpus work too.
  int ncpu = static_cast<int>(max_cpu + 1 > 0 ? max_cpu + 1 : 1);
  cpu_set_t* set = CPU_ALLOC(ncpu);
  if (set == nullptr) ThrowErrno(env, "sched_setaffinity", ENOMEM);
  size_t setsize = CPU_ALLOC_SIZE(ncpu);
  CPU_ZERO_S(setsize, set);
  for (uint32_t i = 0; i < n; i++) {
    CPU_SET_S(static_cast<size_t>(arr.Get(i).As<Napi::Number>().Int32Value()), setsize, set);
  }
  // The tid, not 0: 0 also means "calling thread", but the tid makes explicit that
  // this pins only this worker, never the whole process.
  int r = ::sched_setaffinity(Tid(), setsize, set);
  int e = errno;
  CPU_FREE(set);
  if (r < 0) ThrowErrno(env, "sched_setaffinity", e);
  return env.Undefined();
}

Napi::Value GetAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid = Tid();
  // The kernel rejects (EINVAL) a mask smaller than its nr_cpu_ids: grow until it fits.
  for (int ncpu = 1024; ncpu <= (1 << 20); ncpu *= 2) {
    cpu_set_t* set = CPU_ALLOC(ncpu);
    if (set == nullptr) ThrowErrno(env, "sched_getaffinity", ENOMEM);
    size_t setsize = CPU_ALLOC_SIZE(ncpu);
    CPU_ZERO_S(setsize, set);
    if (::sched_getaffinity(tid, setsize, set) < 0) {
      int e = errno;
      CPU_FREE(set);
      if (e == EINVAL) continue;
      ThrowErrno(env, "sched_getaffinity", e);
    }
    Napi::Array out = Napi::Array::New(env);
    uint32_t k = 0;
    for (int c = 0; c < ncpu; c++) {
      if (CPU_ISSET_S(static_cast<size_t>(c), setsize, set)) out.Set(k++, Napi::Number::New(env, c));
    }
    CPU_FREE(set);
    return out;
  }
  ThrowErrno(env, "sched_getaffinity", EINVAL);
}

Napi::Value Gettid(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), Tid()); }

}  // namespace vhostfwd
