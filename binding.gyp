{
  # Linux only: the addon exists for netfilter socket options
  # (IP_TRANSPARENT, SO_MARK, SO_ORIGINAL_DST).
  "conditions": [
    ["OS=='linux'", {
      "targets": [
        {
          "target_name": "transgate",
          "sources": ["native/common.c", "native/transgate.c", "native/udp.c", "native/splice.c", "native/tunnel.c"],
          "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"],
          "cflags": ["-Wall", "-Wextra"],
          # Optimisation: the Release configuration node-gyp builds by default
          # already passes -O3 (common.gypi); adding -O2 here would be overridden.
          "cflags_c": ["-std=gnu11"]
        }
      ]
    }]
  ]
}
