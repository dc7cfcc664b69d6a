// The N-API functions the addon exports (the exports table in vhostfwd.cc), by the file that
// defines each. The V8 function callbacks (copyBind, copyRun, logBind, logUnbind, logRun)
// are declared in v8_bridge.h.
#pragma once

#include <napi.h>

namespace vhostfwd {

// sockets.cc: unix sockets and fd passing
Napi::Value Listen(const Napi::CallbackInfo& info);
Napi::Value Accept(const Napi::CallbackInfo& info);
Napi::Value PeerCred(const Napi::CallbackInfo& info);
Napi::Value SdNotify(const Napi::CallbackInfo& info);
Napi::Value Connect(const Napi::CallbackInfo& info);
Napi::Value Close(const Napi::CallbackInfo& info);
Napi::Value Sendmsg(const Napi::CallbackInfo& info);
Napi::Value SendmsgUnchecked(const Napi::CallbackInfo& info);
Napi::Value Recvmsg(const Napi::CallbackInfo& info);
Napi::Value Read(const Napi::CallbackInfo& info);

// poll.cc: readiness on the libuv loop, blocking waits
Napi::Value Poll(const Napi::CallbackInfo& info);
Napi::Value WaitReadable(const Napi::CallbackInfo& info);
Napi::Value WaitAny(const Napi::CallbackInfo& info);

// memory_v8.cc: mappings as SharedArrayBuffers (V8 internals)
Napi::Value Mmap(const Napi::CallbackInfo& info);
Napi::Value Retire(const Napi::CallbackInfo& info);

// memory.cc: memory files
Napi::Value FdStat(const Napi::CallbackInfo& info);
Napi::Value MemfdCreate(const Napi::CallbackInfo& info);

// eventfd.cc
Napi::Value EventfdCreate(const Napi::CallbackInfo& info);
Napi::Value EventfdRead(const Napi::CallbackInfo& info);
Napi::Value EventfdWrite(const Napi::CallbackInfo& info);
Napi::Value IsEventfd(const Napi::CallbackInfo& info);

// threads.cc
Napi::Value SetAffinity(const Napi::CallbackInfo& info);
Napi::Value GetAffinity(const Napi::CallbackInfo& info);
Napi::Value Gettid(const Napi::CallbackInfo& info);

// copy_v8.cc: bulk copy, the N-API half (V8 internals)
Napi::Value CopyRegister(const Napi::CallbackInfo& info);
Napi::Value CopyUnregister(const Napi::CallbackInfo& info);
Napi::Value CopyBatch(const Napi::CallbackInfo& info);

// uplink_v8.cc: TAP uplink ports (issue 22)
Napi::Value TapOpen(const Napi::CallbackInfo& info);
Napi::Value TapInfo(const Napi::CallbackInfo& info);
Napi::Value TapRead(const Napi::CallbackInfo& info);
Napi::Value TapWrite(const Napi::CallbackInfo& info);

// packet.cc: AF_PACKET uplink ports (issue 22)
Napi::Value PacketOpen(const Napi::CallbackInfo& info);
Napi::Value PacketKick(const Napi::CallbackInfo& info);
Napi::Value PacketError(const Napi::CallbackInfo& info);
Napi::Value PacketInfo(const Napi::CallbackInfo& info);
Napi::Value PacketDrops(const Napi::CallbackInfo& info);
Napi::Value IfIndex(const Napi::CallbackInfo& info);

// xdp.cc: AF_XDP uplink ports (issue 22)
Napi::Value XdpOpen(const Napi::CallbackInfo& info);
Napi::Value XdpKick(const Napi::CallbackInfo& info);
Napi::Value XdpWakeRx(const Napi::CallbackInfo& info);

}  // namespace vhostfwd
