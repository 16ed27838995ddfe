/*
 * naiad_fuse: the few Linux calls the FUSE daemon needs that Node.js cannot make (see
 * docs/decisions/0005-kernel-passthrough.md). Every function returns a number: >= 0 on success,
 * -errno on failure; nothing throws, the TypeScript side (fsdaemon/fuse/native.ts) names errors.
 *
 *   backingOpen(devFd, fileFd)          FUSE_DEV_IOC_BACKING_OPEN: registers fileFd with the
 *                                       FUSE connection of devFd; returns the backing id
 *   backingClose(devFd, id)             FUSE_DEV_IOC_BACKING_CLOSE
 *   mount(source, target, type, data)   mount(2), read-only, nodev, nosuid (a file-backed EROFS)
 *   openByHandle(mountFd, type, bytes)  open_by_handle_at(2), O_RDONLY
 *   nameToHandle(path)                  name_to_handle_at(2): [type, bytes] or -errno (tests)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <unistd.h>

/* include/uapi/linux/fuse.h (7.40); Debian 12's headers predate it */
struct naiad_fuse_backing_map {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};
#define NAIAD_FUSE_DEV_IOC_MAGIC 229
#define NAIAD_FUSE_DEV_IOC_BACKING_OPEN _IOW(NAIAD_FUSE_DEV_IOC_MAGIC, 1, struct naiad_fuse_backing_map)
#define NAIAD_FUSE_DEV_IOC_BACKING_CLOSE _IOW(NAIAD_FUSE_DEV_IOC_MAGIC, 2, uint32_t)

#define MAX_ARGS 4
#define MAX_STR 4096
#define MAX_HANDLE 128

static napi_value num (napi_env env, int64_t v) {
  napi_value r;
  napi_create_int64(env, v, &r);
  return r;
}

static int get_args (napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = MAX_ARGS;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) return -1;
  return 0;
}

static int get_i32 (napi_env env, napi_value v, int32_t *out) {
  return napi_get_value_int32(env, v, out) == napi_ok ? 0 : -1;
}

static int get_str (napi_env env, napi_value v, char *buf) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, buf, MAX_STR, &len) != napi_ok) return -1;
  return len < MAX_STR - 1 ? 0 : -1;
}

static napi_value backing_open (napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  int32_t dev, fd;
  if (get_args(env, info, 2, argv) || get_i32(env, argv[0], &dev) || get_i32(env, argv[1], &fd)) return num(env, -EINVAL);
  struct naiad_fuse_backing_map map;
  memset(&map, 0, sizeof map);
  map.fd = fd;
  int id = ioctl(dev, NAIAD_FUSE_DEV_IOC_BACKING_OPEN, &map);
  return num(env, id < 0 ? -errno : id);
}

static napi_value backing_close (napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  int32_t dev, id;
  if (get_args(env, info, 2, argv) || get_i32(env, argv[0], &dev) || get_i32(env, argv[1], &id)) return num(env, -EINVAL);
  uint32_t bid = (uint32_t)id;
  int r = ioctl(dev, NAIAD_FUSE_DEV_IOC_BACKING_CLOSE, &bid);
  return num(env, r < 0 ? -errno : r);
}

static napi_value do_mount (napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  static char src[MAX_STR], dst[MAX_STR], type[MAX_STR], data[MAX_STR];
  if (get_args(env, info, 4, argv) || get_str(env, argv[0], src) || get_str(env, argv[1], dst) ||
      get_str(env, argv[2], type) || get_str(env, argv[3], data)) return num(env, -EINVAL);
  int r = mount(src, dst, type, MS_RDONLY | MS_NODEV | MS_NOSUID, data);
  return num(env, r < 0 ? -errno : 0);
}

static napi_value open_by_handle (napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  int32_t mfd, type;
  void *bytes = NULL;
  size_t len = 0;
  if (get_args(env, info, 3, argv) || get_i32(env, argv[0], &mfd) || get_i32(env, argv[1], &type) ||
      napi_get_buffer_info(env, argv[2], &bytes, &len) != napi_ok || len > MAX_HANDLE) return num(env, -EINVAL);
  union { struct file_handle fh; char raw[sizeof(struct file_handle) + MAX_HANDLE]; } h;
  memset(&h, 0, sizeof h);
  h.fh.handle_bytes = (unsigned int)len;
  h.fh.handle_type = type;
  memcpy(h.fh.f_handle, bytes, len);
  int fd = open_by_handle_at(mfd, &h.fh, O_RDONLY | O_CLOEXEC | O_NOATIME);
  if (fd < 0 && errno == EPERM) fd = open_by_handle_at(mfd, &h.fh, O_RDONLY | O_CLOEXEC);
  return num(env, fd < 0 ? -errno : fd);
}

static napi_value name_to_handle (napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  static char path[MAX_STR];
  if (get_args(env, info, 1, argv) || get_str(env, argv[0], path)) return num(env, -EINVAL);
  union { struct file_handle fh; char raw[sizeof(struct file_handle) + MAX_HANDLE]; } h;
  memset(&h, 0, sizeof h);
  h.fh.handle_bytes = MAX_HANDLE;
  int mount_id = 0;
  if (name_to_handle_at(AT_FDCWD, path, &h.fh, &mount_id, 0) < 0) return num(env, -errno);
  napi_value arr, buf;
  void *data = NULL;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, num(env, h.fh.handle_type));
  napi_create_buffer_copy(env, h.fh.handle_bytes, h.fh.f_handle, &data, &buf);
  napi_set_element(env, arr, 1, buf);
  return arr;
}

static napi_value init (napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "backingOpen", NULL, backing_open, NULL, NULL, NULL, napi_default, NULL },
    { "backingClose", NULL, backing_close, NULL, NULL, NULL, napi_default, NULL },
    { "mount", NULL, do_mount, NULL, NULL, NULL, napi_default, NULL },
    { "openByHandle", NULL, open_by_handle, NULL, NULL, NULL, napi_default, NULL },
    { "nameToHandle", NULL, name_to_handle, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
