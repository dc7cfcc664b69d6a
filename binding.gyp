# Built by `node-gyp rebuild` (npm install). Output: build/Release/vhostfwd.node
{
  "targets": [
    {
      "target_name": "vhostfwd",
      # One file per concern (addon/vhostfwd.cc's header lists them); the *_v8 files and
      # v8_bridge use V8's own API, not N-API (addon/v8_bridge.h says why).
      "sources": [
        "addon/vhostfwd.cc",
        "addon/args.cc",
        "addon/sockets.cc",
        "addon/poll.cc",
        "addon/memory.cc",
        "addon/eventfd.cc",
        "addon/threads.cc",
        "addon/v8_bridge.cc",
        "addon/memory_v8.cc",
        "addon/copy_v8.cc",
        "addon/log_v8.cc",
        "addon/uplink_v8.cc",
        "addon/packet.cc",
        "addon/xdp.cc"
      ],
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      # Node's common.gypi turns exceptions and -Wunused-parameter off; we want both on.
      "cflags!": ["-fno-exceptions", "-Wno-unused-parameter"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      # V8's own headers (v8.h is needed for the SharedArrayBuffer backing store) trip
      # -Wunused-parameter. -isystem marks Node's include dir as a system header dir
      # (GCC then ignores the duplicate -I), so only OUR code is held to -Wall -Wextra.
      # -fvisibility=hidden: the addon's files call each other directly (no PLT) and the
      # .node exports only N-API's entry points (NAPI_MODULE_EXPORT), as when it was one file
      # with everything in an anonymous namespace.
      "cflags": ["-Wall", "-Wextra", "-fvisibility=hidden", "-isystem", "<(node_root_dir)/include/node"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra"]
    }
  ]
}
