//! The parts of MariaDB 10.11's plugin ABI this plugin uses, written out by hand from
//! `/usr/include/mariadb/server/mysql/plugin.h`, `service_my_print_error.h` and `service_sql.h`
//! (Debian's `libmariadbd-dev`). x86_64/aarch64 Linux (LP64) only.
//!
//! `tests::layout_matches_the_installed_server_headers` compiles a C program against the
//! installed headers with clang and compares every size, offset, constant and service version
//! used here, so a server whose ABI differs fails the tests instead of crashing at load.

use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void};

/// `MARIA_PLUGIN_INTERFACE_VERSION`.
pub const MARIA_PLUGIN_INTERFACE_VERSION: c_int = 0x010f;
/// `MYSQL_DAEMON_PLUGIN`.
pub const MYSQL_DAEMON_PLUGIN: c_int = 3;
/// `MYSQL_VERSION_ID` of the headers the plugin was checked against (10.11.x); only its
/// `<< 8` form is an interface version.
pub const MYSQL_VERSION_ID: c_int = 101119;
/// `MYSQL_DAEMON_INTERFACE_VERSION`: the server only checks the major/minor part of it.
pub const MYSQL_DAEMON_INTERFACE_VERSION: c_int = MYSQL_VERSION_ID << 8;
/// `PLUGIN_LICENSE_BSD` (the project is Apache-2.0; MariaDB knows no such constant, and BSD is
/// the closest permissive choice it offers).
pub const PLUGIN_LICENSE_BSD: c_int = 2;
/// `MariaDB_PLUGIN_MATURITY_GAMMA`: release servers refuse to load anything less mature unless
/// `plugin_maturity` is lowered (Debian's default is `gamma`).
pub const MARIADB_PLUGIN_MATURITY_GAMMA: c_uint = 4;

// `enum enum_mysql_show_type`
pub const SHOW_BOOL: c_int = 1;
pub const SHOW_ULONGLONG: c_int = 4;
pub const SHOW_CHAR: c_int = 5;
pub const SHOW_ARRAY: c_int = 7;
pub const SHOW_FUNC: c_int = 8;
pub const SHOW_UNDEF: c_int = 0;
/// `SHOW_VAR_FUNC_BUFF_SIZE`: the scratch buffer a `SHOW_FUNC` may fill.
pub const SHOW_VAR_FUNC_BUFF_SIZE: usize = 256 * std::mem::size_of::<*const c_void>();

// `PLUGIN_VAR_*`
pub const PLUGIN_VAR_BOOL: c_int = 0x0001;
pub const PLUGIN_VAR_INT: c_int = 0x0002;
pub const PLUGIN_VAR_STR: c_int = 0x0005;
pub const PLUGIN_VAR_READONLY: c_int = 0x0200;
pub const PLUGIN_VAR_RQCMDARG: c_int = 0x0000;
pub const PLUGIN_VAR_OPCMDARG: c_int = 0x2000;

// `ME_*` flags of `my_printf_error`.
pub const ME_ERROR_LOG_ONLY: c_ulong = 128;
pub const ME_NOTE: c_ulong = 1024;
pub const ME_WARNING: c_ulong = 2048;
/// `ER_UNKNOWN_ERROR`: the error number attached to messages that are not server errors.
pub const ER_UNKNOWN_ERROR: c_uint = 1105;

/// Service versions as the installed `libmysqlservices.a` declares them. The server refuses a
/// plugin whose service major version differs or whose minor version is newer than its own.
pub const MY_PRINT_ERROR_SERVICE_VERSION: usize = 0x0100;
pub const SQL_SERVICE_VERSION: usize = 0x0102;

/// `struct st_maria_plugin`.
#[repr(C)]
pub struct StMariaPlugin {
    pub type_: c_int,
    pub info: *mut c_void,
    pub name: *const c_char,
    pub author: *const c_char,
    pub descr: *const c_char,
    pub license: c_int,
    pub init: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    pub deinit: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    pub version: c_uint,
    pub status_vars: *mut StMysqlShowVar,
    pub system_vars: *mut *mut c_void,
    pub version_info: *const c_char,
    pub maturity: c_uint,
}

/// The all-zero entry that ends `_maria_plugin_declarations_`.
pub const PLUGIN_END: StMariaPlugin = StMariaPlugin {
    type_: 0,
    info: std::ptr::null_mut(),
    name: std::ptr::null(),
    author: std::ptr::null(),
    descr: std::ptr::null(),
    license: 0,
    init: None,
    deinit: None,
    version: 0,
    status_vars: std::ptr::null_mut(),
    system_vars: std::ptr::null_mut(),
    version_info: std::ptr::null(),
    maturity: 0,
};

/// `struct st_mysql_daemon`.
#[repr(C)]
pub struct StMysqlDaemon {
    pub interface_version: c_int,
}

/// `struct st_mysql_show_var`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StMysqlShowVar {
    pub name: *const c_char,
    pub value: *mut c_void,
    pub type_: c_int,
}

pub const SHOW_VAR_END: StMysqlShowVar = StMysqlShowVar {
    name: std::ptr::null(),
    value: std::ptr::null_mut(),
    type_: SHOW_UNDEF,
};

/// `mysql_show_var_func`: (thd, var, buff, status_var, scope).
pub type ShowVarFunc =
    unsafe extern "C" fn(*mut c_void, *mut StMysqlShowVar, *mut c_void, *mut c_void, c_int) -> c_int;

/// `mysql_var_check_func`; the server fills in its default when null.
pub type VarCheckFunc = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void, *mut c_void) -> c_int;
/// `mysql_var_update_func`; the server fills in its default when null.
pub type VarUpdateFunc = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void, *const c_void);

/// `MYSQL_PLUGIN_VAR_HEADER`. The server writes `check`, `update` and `flags` while
/// registering a variable, so every variable lives in a `static mut`.
#[repr(C)]
pub struct SysVarHeader {
    pub flags: c_int,
    pub name: *const c_char,
    pub comment: *const c_char,
    pub check: Option<VarCheckFunc>,
    pub update: Option<VarUpdateFunc>,
}

/// `DECLARE_MYSQL_SYSVAR_BASIC(name, char)`: `MYSQL_SYSVAR_BOOL`.
#[repr(C)]
pub struct SysVarBool {
    pub header: SysVarHeader,
    pub value: *mut c_char,
    pub def_val: c_char,
}

/// `DECLARE_MYSQL_SYSVAR_BASIC(name, char *)`: `MYSQL_SYSVAR_STR`.
#[repr(C)]
pub struct SysVarStr {
    pub header: SysVarHeader,
    pub value: *mut *mut c_char,
    pub def_val: *const c_char,
}

/// `DECLARE_MYSQL_SYSVAR_SIMPLE(name, int)`: `MYSQL_SYSVAR_INT`.
#[repr(C)]
pub struct SysVarInt {
    pub header: SysVarHeader,
    pub value: *mut c_int,
    pub def_val: c_int,
    pub min_val: c_int,
    pub max_val: c_int,
    pub blk_sz: c_int,
}

/// `struct my_print_error_service_st`.
#[repr(C)]
pub struct MyPrintErrorService {
    pub my_error_func: unsafe extern "C" fn(c_uint, c_ulong, ...),
    pub my_printf_error_func: unsafe extern "C" fn(c_uint, *const c_char, c_ulong, ...),
    pub my_printv_error_func: *const c_void,
}

/// Opaque `MYSQL` and `MYSQL_RES`: only ever handled by pointer.
pub enum Mysql {}
pub enum MysqlRes {}

/// The leading members of `struct sql_service_st` (those this plugin calls); the server's
/// struct continues after them, which is fine as the plugin only reads through a pointer.
#[repr(C)]
pub struct SqlService {
    pub mysql_init_func: unsafe extern "C" fn(*mut Mysql) -> *mut Mysql,
    pub mysql_real_connect_local_func: unsafe extern "C" fn(*mut Mysql) -> *mut Mysql,
    pub mysql_real_connect_func: *const c_void,
    pub mysql_errno_func: unsafe extern "C" fn(*mut Mysql) -> c_uint,
    pub mysql_error_func: unsafe extern "C" fn(*mut Mysql) -> *const c_char,
    pub mysql_real_query_func: unsafe extern "C" fn(*mut Mysql, *const c_char, c_ulong) -> c_int,
    pub mysql_affected_rows_func: *const c_void,
    pub mysql_num_rows_func: *const c_void,
    pub mysql_store_result_func: unsafe extern "C" fn(*mut Mysql) -> *mut MysqlRes,
    pub mysql_free_result_func: unsafe extern "C" fn(*mut MysqlRes),
    pub mysql_fetch_row_func: unsafe extern "C" fn(*mut MysqlRes) -> *mut *mut c_char,
    pub mysql_close_func: unsafe extern "C" fn(*mut Mysql),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::mem::{offset_of, size_of};
    use std::path::Path;
    use std::process::Command;

    use super::*;

    const HEADERS: &str = "/usr/include/mariadb/server";
    const SERVICES_LIB: &str = "/usr/lib/x86_64-linux-gnu/libmysqlservices.a";

    /// The C side: every value the Rust side relies on, as `name=value` lines.
    const PROBE_C: &str = r#"
#define MYSQL_DYNAMIC_PLUGIN
#include <stdio.h>
#include <stddef.h>
#include <mysql/plugin.h>

typedef DECLARE_MYSQL_SYSVAR_BASIC(bool_t, char);
typedef DECLARE_MYSQL_SYSVAR_BASIC(str_t, char *);
typedef DECLARE_MYSQL_SYSVAR_SIMPLE(int_t, int);

#define V(name, expr) printf("%s=%lld\n", name, (long long)(expr))
#define S(type) V("sizeof " #type, sizeof(type))
#define O(type, field) V(#type "." #field, offsetof(type, field))

int main(void) {
  V("MARIA_PLUGIN_INTERFACE_VERSION", MARIA_PLUGIN_INTERFACE_VERSION);
  V("MYSQL_DAEMON_PLUGIN", MYSQL_DAEMON_PLUGIN);
  V("MYSQL_DAEMON_INTERFACE_VERSION", MYSQL_DAEMON_INTERFACE_VERSION);
  V("PLUGIN_LICENSE_BSD", PLUGIN_LICENSE_BSD);
  V("MariaDB_PLUGIN_MATURITY_GAMMA", MariaDB_PLUGIN_MATURITY_GAMMA);
  V("SHOW_UNDEF", SHOW_UNDEF);
  V("SHOW_BOOL", SHOW_BOOL);
  V("SHOW_ULONGLONG", SHOW_ULONGLONG);
  V("SHOW_CHAR", SHOW_CHAR);
  V("SHOW_ARRAY", SHOW_ARRAY);
  V("SHOW_FUNC", SHOW_FUNC);
  V("SHOW_VAR_FUNC_BUFF_SIZE", SHOW_VAR_FUNC_BUFF_SIZE);
  V("PLUGIN_VAR_BOOL", PLUGIN_VAR_BOOL);
  V("PLUGIN_VAR_INT", PLUGIN_VAR_INT);
  V("PLUGIN_VAR_STR", PLUGIN_VAR_STR);
  V("PLUGIN_VAR_READONLY", PLUGIN_VAR_READONLY);
  V("PLUGIN_VAR_RQCMDARG", PLUGIN_VAR_RQCMDARG);
  V("PLUGIN_VAR_OPCMDARG", PLUGIN_VAR_OPCMDARG);
  V("ME_ERROR_LOG_ONLY", ME_ERROR_LOG_ONLY);
  V("ME_NOTE", ME_NOTE);
  V("ME_WARNING", ME_WARNING);
  V("sizeof enum_mysql_show_type", sizeof(enum enum_mysql_show_type));
  V("sizeof my_bool", sizeof(my_bool));

  S(struct st_maria_plugin);
  O(struct st_maria_plugin, type);
  O(struct st_maria_plugin, info);
  O(struct st_maria_plugin, name);
  O(struct st_maria_plugin, author);
  O(struct st_maria_plugin, descr);
  O(struct st_maria_plugin, license);
  O(struct st_maria_plugin, init);
  O(struct st_maria_plugin, deinit);
  O(struct st_maria_plugin, version);
  O(struct st_maria_plugin, status_vars);
  O(struct st_maria_plugin, system_vars);
  O(struct st_maria_plugin, version_info);
  O(struct st_maria_plugin, maturity);
  S(struct st_mysql_daemon);
  S(struct st_mysql_show_var);
  O(struct st_mysql_show_var, name);
  O(struct st_mysql_show_var, value);
  O(struct st_mysql_show_var, type);

  S(mysql_sysvar_bool_t);
  O(mysql_sysvar_bool_t, flags);
  O(mysql_sysvar_bool_t, name);
  O(mysql_sysvar_bool_t, comment);
  O(mysql_sysvar_bool_t, check);
  O(mysql_sysvar_bool_t, update);
  O(mysql_sysvar_bool_t, value);
  O(mysql_sysvar_bool_t, def_val);
  S(mysql_sysvar_str_t);
  O(mysql_sysvar_str_t, value);
  O(mysql_sysvar_str_t, def_val);
  S(mysql_sysvar_int_t);
  O(mysql_sysvar_int_t, value);
  O(mysql_sysvar_int_t, def_val);
  O(mysql_sysvar_int_t, min_val);
  O(mysql_sysvar_int_t, max_val);
  O(mysql_sysvar_int_t, blk_sz);

  O(struct my_print_error_service_st, my_error_func);
  O(struct my_print_error_service_st, my_printf_error_func);
  O(struct my_print_error_service_st, my_printv_error_func);
  O(struct sql_service_st, mysql_init_func);
  O(struct sql_service_st, mysql_real_connect_local_func);
  O(struct sql_service_st, mysql_errno_func);
  O(struct sql_service_st, mysql_error_func);
  O(struct sql_service_st, mysql_real_query_func);
  O(struct sql_service_st, mysql_store_result_func);
  O(struct sql_service_st, mysql_free_result_func);
  O(struct sql_service_st, mysql_fetch_row_func);
  O(struct sql_service_st, mysql_close_func);

  /* libmysqlservices.a initialises each service pointer to its version number. */
  V("my_print_error_service version", (long long)(size_t)my_print_error_service);
  V("sql_service version", (long long)(size_t)sql_service);
  return 0;
}
"#;

    fn rust_side() -> BTreeMap<String, i64> {
        let mut v = BTreeMap::new();
        let mut put = |k: &str, x: i64| {
            v.insert(k.to_string(), x);
        };
        put(
            "MARIA_PLUGIN_INTERFACE_VERSION",
            MARIA_PLUGIN_INTERFACE_VERSION.into(),
        );
        put("MYSQL_DAEMON_PLUGIN", MYSQL_DAEMON_PLUGIN.into());
        put(
            "MYSQL_DAEMON_INTERFACE_VERSION",
            MYSQL_DAEMON_INTERFACE_VERSION.into(),
        );
        put("PLUGIN_LICENSE_BSD", PLUGIN_LICENSE_BSD.into());
        put(
            "MariaDB_PLUGIN_MATURITY_GAMMA",
            MARIADB_PLUGIN_MATURITY_GAMMA.into(),
        );
        put("SHOW_UNDEF", SHOW_UNDEF.into());
        put("SHOW_BOOL", SHOW_BOOL.into());
        put("SHOW_ULONGLONG", SHOW_ULONGLONG.into());
        put("SHOW_CHAR", SHOW_CHAR.into());
        put("SHOW_ARRAY", SHOW_ARRAY.into());
        put("SHOW_FUNC", SHOW_FUNC.into());
        put("SHOW_VAR_FUNC_BUFF_SIZE", SHOW_VAR_FUNC_BUFF_SIZE as i64);
        put("PLUGIN_VAR_BOOL", PLUGIN_VAR_BOOL.into());
        put("PLUGIN_VAR_INT", PLUGIN_VAR_INT.into());
        put("PLUGIN_VAR_STR", PLUGIN_VAR_STR.into());
        put("PLUGIN_VAR_READONLY", PLUGIN_VAR_READONLY.into());
        put("PLUGIN_VAR_RQCMDARG", PLUGIN_VAR_RQCMDARG.into());
        put("PLUGIN_VAR_OPCMDARG", PLUGIN_VAR_OPCMDARG.into());
        put("ME_ERROR_LOG_ONLY", ME_ERROR_LOG_ONLY as i64);
        put("ME_NOTE", ME_NOTE as i64);
        put("ME_WARNING", ME_WARNING as i64);
        put("sizeof enum_mysql_show_type", size_of::<c_int>() as i64);
        put("sizeof my_bool", size_of::<c_char>() as i64);

        macro_rules! s {
            ($c:literal, $t:ty) => {
                put(concat!("sizeof ", $c), size_of::<$t>() as i64)
            };
        }
        macro_rules! o {
            ($c:literal, $t:ty, $cf:literal, $($f:tt)+) => {
                put(concat!($c, ".", $cf), offset_of!($t, $($f)+) as i64)
            };
        }
        s!("struct st_maria_plugin", StMariaPlugin);
        o!("struct st_maria_plugin", StMariaPlugin, "type", type_);
        o!("struct st_maria_plugin", StMariaPlugin, "info", info);
        o!("struct st_maria_plugin", StMariaPlugin, "name", name);
        o!("struct st_maria_plugin", StMariaPlugin, "author", author);
        o!("struct st_maria_plugin", StMariaPlugin, "descr", descr);
        o!("struct st_maria_plugin", StMariaPlugin, "license", license);
        o!("struct st_maria_plugin", StMariaPlugin, "init", init);
        o!("struct st_maria_plugin", StMariaPlugin, "deinit", deinit);
        o!("struct st_maria_plugin", StMariaPlugin, "version", version);
        o!(
            "struct st_maria_plugin",
            StMariaPlugin,
            "status_vars",
            status_vars
        );
        o!(
            "struct st_maria_plugin",
            StMariaPlugin,
            "system_vars",
            system_vars
        );
        o!(
            "struct st_maria_plugin",
            StMariaPlugin,
            "version_info",
            version_info
        );
        o!("struct st_maria_plugin", StMariaPlugin, "maturity", maturity);
        s!("struct st_mysql_daemon", StMysqlDaemon);
        s!("struct st_mysql_show_var", StMysqlShowVar);
        o!("struct st_mysql_show_var", StMysqlShowVar, "name", name);
        o!("struct st_mysql_show_var", StMysqlShowVar, "value", value);
        o!("struct st_mysql_show_var", StMysqlShowVar, "type", type_);

        s!("mysql_sysvar_bool_t", SysVarBool);
        o!("mysql_sysvar_bool_t", SysVarBool, "flags", header.flags);
        o!("mysql_sysvar_bool_t", SysVarBool, "name", header.name);
        o!("mysql_sysvar_bool_t", SysVarBool, "comment", header.comment);
        o!("mysql_sysvar_bool_t", SysVarBool, "check", header.check);
        o!("mysql_sysvar_bool_t", SysVarBool, "update", header.update);
        o!("mysql_sysvar_bool_t", SysVarBool, "value", value);
        o!("mysql_sysvar_bool_t", SysVarBool, "def_val", def_val);
        s!("mysql_sysvar_str_t", SysVarStr);
        o!("mysql_sysvar_str_t", SysVarStr, "value", value);
        o!("mysql_sysvar_str_t", SysVarStr, "def_val", def_val);
        s!("mysql_sysvar_int_t", SysVarInt);
        o!("mysql_sysvar_int_t", SysVarInt, "value", value);
        o!("mysql_sysvar_int_t", SysVarInt, "def_val", def_val);
        o!("mysql_sysvar_int_t", SysVarInt, "min_val", min_val);
        o!("mysql_sysvar_int_t", SysVarInt, "max_val", max_val);
        o!("mysql_sysvar_int_t", SysVarInt, "blk_sz", blk_sz);

        o!(
            "struct my_print_error_service_st",
            MyPrintErrorService,
            "my_error_func",
            my_error_func
        );
        o!(
            "struct my_print_error_service_st",
            MyPrintErrorService,
            "my_printf_error_func",
            my_printf_error_func
        );
        o!(
            "struct my_print_error_service_st",
            MyPrintErrorService,
            "my_printv_error_func",
            my_printv_error_func
        );
        o!(
            "struct sql_service_st",
            SqlService,
            "mysql_init_func",
            mysql_init_func
        );
        o!(
            "struct sql_service_st",
            SqlService,
            "mysql_real_connect_local_func",
            mysql_real_connect_local_func
        );
        o!(
            "struct sql_service_st",
            SqlService,
            "mysql_errno_func",
            mysql_errno_func
        );
        o!(
            "struct sql_service_st",
            SqlService,
            "mysql_error_func",
            mysql_error_func
        );
        o!(
            "struct sql_service_st",
            SqlService,
            "mysql_real_query_func",
            mysql_real_query_func
        );
        o!(
            "struct sql_service_st",
            SqlService,
            "mysql_store_result_func",
            mysql_store_result_func
        );
        o!(
            "struct sql_service_st",
            SqlService,
            "mysql_free_result_func",
            mysql_free_result_func
        );
        o!(
            "struct sql_service_st",
            SqlService,
            "mysql_fetch_row_func",
            mysql_fetch_row_func
        );
        o!(
            "struct sql_service_st",
            SqlService,
            "mysql_close_func",
            mysql_close_func
        );

        put(
            "my_print_error_service version",
            MY_PRINT_ERROR_SERVICE_VERSION as i64,
        );
        put("sql_service version", SQL_SERVICE_VERSION as i64);
        v
    }

    fn in_ci() -> bool {
        std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
    }

    #[test]
    fn layout_matches_the_installed_server_headers() {
        let missing: Vec<&str> = [
            (Path::new(HEADERS).join("mysql/plugin.h"), "libmariadbd-dev"),
            (SERVICES_LIB.into(), "libmariadbd-dev"),
            ("/usr/bin/clang".into(), "clang"),
        ]
        .into_iter()
        .filter(|(path, _)| !path.exists())
        .map(|(_, package)| package)
        .collect();
        if !missing.is_empty() {
            let why = format!(
                "{} not installed (scripts/setup.sh installs it)",
                missing.join(", ")
            );
            assert!(!in_ci(), "layout check: {why}; CI must run it");
            eprintln!("SKIPPED layout_matches_the_installed_server_headers: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (src, exe) = (dir.path().join("probe.c"), dir.path().join("probe"));
        std::fs::write(&src, PROBE_C).unwrap();
        let out = Command::new("clang")
            .arg(format!("-I{HEADERS}"))
            .arg(&src)
            .arg(SERVICES_LIB)
            .arg("-o")
            .arg(&exe)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "clang failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(&exe).output().unwrap();
        assert!(out.status.success());
        let c_side: BTreeMap<String, i64> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let (k, v) = l.rsplit_once('=').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect();
        let rust = rust_side();
        let differ: Vec<String> = c_side
            .iter()
            .filter(|(k, v)| rust.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: C {v}, Rust {:?}", rust.get(k)))
            .collect();
        assert!(
            differ.is_empty(),
            "ABI differs from the headers:\n{}",
            differ.join("\n")
        );
        assert_eq!(
            c_side.keys().collect::<Vec<_>>(),
            rust.keys().collect::<Vec<_>>(),
            "both sides check the same names"
        );
    }
}
