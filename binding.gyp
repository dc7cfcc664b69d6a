# Built by `node-gyp rebuild` (npm install). Output: build/Release/vhostfwd.node
{
  "targets": [
    {
      "target_name": "vhostfwd",
      "sources": ["addon/vhostfwd.cc"],
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
      "cflags": ["-Wall", "-Wextra", "-isystem", "<(node_root_dir)/include/node"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra"]
    }
  ]
}
