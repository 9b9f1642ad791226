/* The helpers declared in common.h, shared by transgate.c, udp.c and splice.c. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strerrorname_np */
#endif

#include "common.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void tg_throw_napi_failure(napi_env env, const char *what) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return;
  const napi_extended_error_info *info = NULL;
  const char *msg = what;
  if (napi_get_last_error_info(env, &info) == napi_ok && info != NULL &&
      info->error_message != NULL)
    msg = info->error_message;
  napi_throw_error(env, "ERR_TRANSGATE_NAPI", msg);
}

const char *tg_errno_name(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  const char *name = strerrorname_np(err);
  if (name != NULL) return name;
#endif
  (void)err;
  return "EUNKNOWN";
}

napi_value tg_throw_errno(napi_env env, const char *syscall, int err) {
  char msg[256];
  napi_value code, message, error, errno_val, syscall_val;
  snprintf(msg, sizeof msg, "%s: %s", syscall, strerror(err));
  if (napi_create_string_utf8(env, tg_errno_name(err), NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok ||
      napi_create_error(env, code, message, &error) != napi_ok ||
      napi_create_int32(env, -err, &errno_val) != napi_ok ||
      napi_set_named_property(env, error, "errno", errno_val) != napi_ok ||
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_val) != napi_ok ||
      napi_set_named_property(env, error, "syscall", syscall_val) != napi_ok ||
      napi_throw(env, error) != napi_ok) {
    tg_throw_napi_failure(env, msg);
  }
  return NULL;
}

napi_value tg_throw_arg(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

void tg_close_keep_errno(int fd) {
  int saved = errno;
  close(fd);
  errno = saved;
}

bool tg_get_int(napi_env env, napi_value v, const char *name, double min, double max,
                double *out) {
  char msg[128];
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number ||
      napi_get_value_double(env, v, &d) != napi_ok || d != d /* NaN */ ||
      d < min || d > max || d != (double)(long long)d) {
    snprintf(msg, sizeof msg, "%s must be an integer in [%.0f, %.0f]", name, min, max);
    tg_throw_arg(env, msg);
    return false;
  }
  *out = d;
  return true;
}

bool tg_get_fd(napi_env env, napi_value v, int *fd) {
  double d;
  if (!tg_get_int(env, v, "fd", 0, INT_MAX, &d)) return false;
  *fd = (int)d;
  return true;
}

bool tg_get_bool(napi_env env, napi_value v, const char *name, bool *out) {
  char msg[128];
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_boolean ||
      napi_get_value_bool(env, v, out) != napi_ok) {
    snprintf(msg, sizeof msg, "%s must be a boolean", name);
    tg_throw_arg(env, msg);
    return false;
  }
  return true;
}

bool tg_get_args(napi_env env, napi_callback_info info, size_t argc, napi_value *argv) {
  size_t got = argc;
  if (napi_get_cb_info(env, info, &got, argv, NULL, NULL) != napi_ok) {
    tg_throw_napi_failure(env, "napi_get_cb_info");
    return false;
  }
  return true;
}
