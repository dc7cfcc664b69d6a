// vhostfwd native addon: only the syscalls Node cannot make itself. The JS-facing
// contract (argument types, return conventions, errors) is documented in src/native.ts.
//
// Design rules:
//  - Every failure throws an Error with .code = errno name, .errno = -errno and
//    .syscall, so TypeScript can branch on codes exactly as it does for Node's own errors.
//  - "Nothing available" is a return value, never an exception (EAGAIN -> -1 / 0 / false):
//    the dataplane polls in hot loops and exceptions are expensive there.
//  - The module is loaded once per isolate (main thread and every worker), and each load
//    is independent (context-aware addon). Shared state is explicit and small: the live
//    mappings (g_maps, under a mutex: any thread may unmap), whether RWF_NOWAIT works
//    (an atomic), and each thread's hot-path tables (HOT_TLS pointers).
//
// Files, by concern (all in namespace vhostfwd; what only one file uses stays in its
// anonymous namespace):
//   vhostfwd.cc    this file: the module init (exports table, this thread's hot-path
//                  tables, the cleanup hook that frees them)
//   args.h/.cc     errors and arguments (ThrowErrno, ErrnoName, ArgFd, ArgInt, ArgU64, ...)
//   functions.h    the N-API functions the exports table names
//   sockets.cc     unix sockets and fd passing (listen/accept/connect/sendmsg/recvmsg/close/read)
//   poll.cc        readiness: uv_poll handles on the thread's loop, waitReadable, waitAny
//   memory.cc      fdStat, memfdCreate
//   eventfd.cc     eventfd create/read/write (never blocking: RWF_NOWAIT), isEventfd
//   threads.cc     setAffinity, getAffinity, gettid
// V8 internals, fenced off (what breaks on a Node upgrade and why it is used: v8_bridge.h):
//   v8_bridge.h/.cc  the one include of v8.h: napi_value <-> v8::Local, V8 callback helpers
//   memory_v8.cc   mmap as a SharedArrayBuffer owning the mapping, retire, the g_maps registry
//   hot_tls.h      the per-thread tables of the per-burst helpers (HOT_TLS, initial-exec)
//   copy_v8.cc     bulk copy: copyRegister/Unregister/Batch/Bind/Run
//   log_v8.cc      dirty-log page marking: logBind/logUnbind/logRun
//   uplink_v8.cc   TAP uplink ports: tapOpen/tapInfo, and tapRead/tapWrite (a burst between
//                  the fd and a buffer of the copy table)
//   packet.cc      AF_PACKET uplink ports: packetOpen (TPACKET_V2 rings), packetKick, packetError,
//                  packetInfo, packetDrops, ifIndex
//   xdp.cc         AF_XDP uplink ports: xdpOpen (UMEM, rings, XSKMAP, program, link), xdpKick,
//                  xdpWakeRx

#include <napi.h>

#include <memory>
#include <vector>

#include "functions.h"
#include "hot_tls.h"
#include "v8_bridge.h"

namespace vhostfwd {
namespace {

HOT_TLS int t_envs = 0;  // Node environments on this thread that loaded the addon

}  // namespace
}  // namespace vhostfwd

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  using namespace vhostfwd;
  struct Entry {
    const char* name;
    Napi::Value (*fn)(const Napi::CallbackInfo&);
  };
  static const Entry kEntries[] = {
      {"listen", Listen},
      {"accept", Accept},
      {"peerCred", PeerCred},
      {"sdNotify", SdNotify},
      {"connect", Connect},
      {"close", Close},
      {"sendmsg", Sendmsg},
      {"sendmsgUnchecked", SendmsgUnchecked},
      {"recvmsg", Recvmsg},
      {"read", Read},
      {"poll", Poll},
      {"mmap", Mmap},
      {"fdStat", FdStat},
      {"memfdCreate", MemfdCreate},
      {"eventfdCreate", EventfdCreate},
      {"eventfdRead", EventfdRead},
      {"eventfdWrite", EventfdWrite},
      {"isEventfd", IsEventfd},
      {"retire", Retire},
      {"waitReadable", WaitReadable},
      {"waitAny", WaitAny},
      {"setAffinity", SetAffinity},
      {"getAffinity", GetAffinity},
      {"gettid", Gettid},
      {"copyRegister", CopyRegister},
      {"copyUnregister", CopyUnregister},
      {"copyBatch", CopyBatch},
      {"tapOpen", TapOpen},
      {"tapInfo", TapInfo},
      {"tapRead", TapRead},
      {"tapWrite", TapWrite},
      {"packetOpen", PacketOpen},
      {"packetKick", PacketKick},
      {"packetError", PacketError},
      {"packetInfo", PacketInfo},
      {"packetDrops", PacketDrops},
      {"ifIndex", IfIndex},
      {"xdpOpen", XdpOpen},
      {"xdpKick", XdpKick},
      {"xdpWakeRx", XdpWakeRx},
  };
  for (const Entry& e : kEntries) exports.Set(e.name, Napi::Function::New(env, e.fn, e.name));
  SetV8Function(env, exports, "copyBind", CopyBind);
  SetV8Function(env, exports, "copyRun", CopyRun);
  SetV8Function(env, exports, "copyPrefetch", CopyPrefetch);
  SetV8Function(env, exports, "logBind", LogBind);
  SetV8Function(env, exports, "logUnbind", LogUnbind);
  SetV8Function(env, exports, "logRun", LogRun);
  // This thread's tables (see HOT_TLS), made by its first environment. They hold V8 backing
  // stores: released while the isolate is still alive, when its last environment goes.
  if (t_envs++ == 0) {
    t_copy_regions = new std::vector<CopyRegion>();
    t_copy_jobs = new std::vector<CopyJob>();
    t_bound_jobs = new std::vector<std::unique_ptr<BoundJobs>>();
    t_bound_logs = new std::vector<std::unique_ptr<BoundLog>>();
  }
  napi_add_env_cleanup_hook(
      env,
      [](void*) {
        if (--t_envs > 0) return;
        delete t_copy_regions;
        delete t_copy_jobs;
        delete t_bound_jobs;
        delete t_bound_logs;
        t_copy_regions = nullptr;
        t_copy_jobs = nullptr;
        t_bound_jobs = nullptr;
        t_bound_logs = nullptr;
      },
      nullptr);
  return exports;
}

}  // namespace

NODE_API_MODULE(vhostfwd, Init)
