//! What the plugin uses of the server: two plugin services (the error log and the SQL service)
//! and three exported server symbols, all looked up at run time so that the library has no
//! undefined symbols and its unit tests link without a server.
//!
//! Plugin services work by name: when the server loads the library it looks each service up
//! with `dlsym`, checks that the symbol's initial value (the service version the plugin was
//! built against) is compatible, and overwrites it with a pointer to the service.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;

use crate::abi::{
    MyPrintErrorService, Mysql, SqlService, ER_UNKNOWN_ERROR, ME_ERROR_LOG_ONLY, ME_NOTE, ME_WARNING,
    MY_PRINT_ERROR_SERVICE_VERSION, SQL_SERVICE_VERSION,
};

/// Replaced by the server with `&my_print_error_handler` at load.
// SAFETY (no_mangle): the server looks this symbol up by its C name.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut my_print_error_service: *const MyPrintErrorService =
    ptr::without_provenance(MY_PRINT_ERROR_SERVICE_VERSION);

/// Replaced by the server with `&sql_service_handler` at load.
// SAFETY (no_mangle): the server looks this symbol up by its C name.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut sql_service: *const SqlService = ptr::without_provenance(SQL_SERVICE_VERSION);

/// A service pointer once the server has replaced the version number with the service.
fn service<T>(slot: *const *const T, version: usize) -> Option<&'static T> {
    // SAFETY: `slot` points at one of the statics above; the server writes them once, at load,
    // before any plugin code runs, so a plain read cannot race.
    let p = unsafe { ptr::read_volatile(slot) };
    if p.is_null() || p.addr() == version {
        return None;
    }
    // SAFETY: the server's service structs are static and live as long as the server.
    Some(unsafe { &*p })
}

fn print_error_service() -> Option<&'static MyPrintErrorService> {
    service(&raw const my_print_error_service, MY_PRINT_ERROR_SERVICE_VERSION)
}

fn sql() -> Option<&'static SqlService> {
    service(&raw const sql_service, SQL_SERVICE_VERSION)
}

/// Severity of an error log line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Level {
    Note,
    Warning,
    Error,
}

/// A line in the server's error log: `[Note] mariadbd: innodb_page_server: <msg>`.
pub fn log(level: Level, msg: &str) {
    let line = format!("innodb_page_server: {msg}");
    let flags = ME_ERROR_LOG_ONLY
        | match level {
            Level::Note => ME_NOTE,
            Level::Warning => ME_WARNING,
            Level::Error => 0,
        };
    print(&line, flags);
}

/// A warning for the client running the current statement (`INSTALL SONAME`), not logged.
pub fn warn_client(msg: &str) {
    print(&format!("innodb_page_server: {msg}"), ME_WARNING);
}

fn print(line: &str, flags: std::ffi::c_ulong) {
    let text = CString::new(line.replace('\0', " ")).expect("NULs replaced");
    match print_error_service() {
        // SAFETY: `my_printf_error(nr, fmt, flags, ...)` with a "%s" format and one C string,
        // exactly as the service header declares it.
        Some(s) => unsafe {
            (s.my_printf_error_func)(ER_UNKNOWN_ERROR, c"%s".as_ptr(), flags, text.as_ptr())
        },
        // Not loaded by a server (unit tests): stderr is the best there is.
        None => eprintln!("{line}"),
    }
}

/// An exported symbol of the running server, or `None` outside one.
fn server_symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads the symbol tables.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// Whether the server has finished starting (`mysqld_server_started`); `None` outside a server.
pub fn server_started() -> Option<bool> {
    let p = server_symbol(c"mysqld_server_started")?.cast::<c_int>();
    // SAFETY: `int mysqld_server_started` is a global of mariadbd, written once (0 -> 1) by the
    // main thread; a volatile read of an aligned int sees either value.
    Some(unsafe { ptr::read_volatile(p) } != 0)
}

/// Runs `f` on a thread the server's mysys library knows (`my_thread_init`), as every server
/// call that creates a THD requires.
pub fn with_server_thread<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    let init = server_symbol(c"my_thread_init").ok_or("my_thread_init is not exported")?;
    let end = server_symbol(c"my_thread_end").ok_or("my_thread_end is not exported")?;
    // SAFETY: `my_bool my_thread_init(void)` and `void my_thread_end(void)` (my_pthread.h):
    // the symbols are functions of exactly these types.
    let (init, end) = unsafe {
        (
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_char>(init),
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn()>(end),
        )
    };
    // SAFETY: called once on this thread before any other server call, paired with `end`.
    if unsafe { init() } != 0 {
        return Err("my_thread_init failed".into());
    }
    let result = f();
    // SAFETY: pairs the successful `init` above, on the same thread.
    unsafe { end() };
    result
}

/// The first column of the first row of `query`, run on a local connection of the SQL service.
/// Call it from a thread set up by [`with_server_thread`] once the server has started.
pub fn query_value(query: &str) -> Result<String, String> {
    let s = sql().ok_or("the SQL service is not available")?;
    let q = CString::new(query).map_err(|e| e.to_string())?;
    // SAFETY: the service's functions are the server's client-library implementation; every
    // handle passed back is the one it returned, and each is freed exactly once below.
    unsafe {
        let mysql = (s.mysql_init_func)(ptr::null_mut());
        if mysql.is_null() {
            return Err("mysql_init failed".into());
        }
        let result = (|| {
            if (s.mysql_real_connect_local_func)(mysql).is_null() {
                return Err(format!("local connection failed: {}", error(s, mysql)));
            }
            if (s.mysql_real_query_func)(mysql, q.as_ptr(), query.len() as _) != 0 {
                return Err(format!("{query}: {}", error(s, mysql)));
            }
            let res = (s.mysql_store_result_func)(mysql);
            if res.is_null() {
                return Err(format!("{query}: no result ({})", error(s, mysql)));
            }
            let row = (s.mysql_fetch_row_func)(res);
            let value = if row.is_null() || (*row).is_null() {
                Err(format!("{query}: no value"))
            } else {
                Ok(CStr::from_ptr(*row).to_string_lossy().into_owned())
            };
            (s.mysql_free_result_func)(res);
            value
        })();
        (s.mysql_close_func)(mysql);
        result
    }
}

/// # Safety
/// `mysql` is a live handle of the service `s`.
unsafe fn error(s: &SqlService, mysql: *mut Mysql) -> String {
    // SAFETY: per this function's contract; the message lives in the handle.
    let (errno, msg) = unsafe { ((s.mysql_errno_func)(mysql), (s.mysql_error_func)(mysql)) };
    let text = if msg.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated message owned by the handle, copied at once.
        unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
    };
    format!("error {errno}: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_server_nothing_is_available_and_logging_falls_back_to_stderr() {
        assert!(print_error_service().is_none() && sql().is_none());
        assert_eq!(server_started(), None);
        assert!(with_server_thread(|| Ok(())).is_err());
        log(Level::Warning, "a test line on stderr");
        assert!(query_value("SELECT 1").unwrap_err().contains("not available"));
    }
}
