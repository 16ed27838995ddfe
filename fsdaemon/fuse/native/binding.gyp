{
  "targets": [
    {
      "target_name": "naiad_fuse",
      "sources": ["naiad_fuse.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
