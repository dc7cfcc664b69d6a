// Memory files: fdStat (a region's size and identity) and memfdCreate. N-API only; the
// mappings themselves (mmap as a SharedArrayBuffer, retire) are in memory_v8.cc.

#include <errno.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "args.h"
#include "functions.h"

namespace vhostfwd {

Napi::Value FdStat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  struct stat st;
  if (::fstat(fd, &st) < 0) ThrowErrno(env, "fstat", errno);
  Napi::Object r = Napi::Object::New(env);
  r.Set("size", Napi::Number::New(env, static_cast<double>(st.st_size)));
  r.Set("blksize", Napi::Number::New(env, static_cast<double>(st.st_blksize)));
  // The file's identity: QEMU sends one ADD_MEM_REG per queue pair, the repeats are
  // recognised by the same backing file (device and inode), not by the fd number.
  r.Set("dev", Napi::Number::New(env, static_cast<double>(st.st_dev)));
  r.Set("ino", Napi::Number::New(env, static_cast<double>(st.st_ino)));
  return r;
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgString(info, 0, "name must be a string");
  uint64_t size = ArgU64(info, 1, "size", "ftruncate");
  int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "memfd_create", errno, name);
  if (::ftruncate(fd, static_cast<off_t>(size)) < 0) {
    int e = errno;
    ::close(fd);
    ThrowErrno(env, "ftruncate", e);
  }
  return Napi::Number::New(env, fd);
}

}  // namespace vhostfwd
