//! `innodb_page_server`: a MariaDB 10.11 daemon plugin that gives a stock server the operator
//! interface of a page-server-patched one, for a datadir mounted by fuse-ibd:
//!
//! - system variables `innodb_page_server_enabled`, `innodb_page_server_address`,
//!   `innodb_page_server_port` (read-only; they show the mount's page server, and setting them
//!   at startup makes them requirements the plugin checks);
//! - status variables `Page_server_*`, read from `<datadir>/.fuse-ibd/status` at every
//!   SHOW STATUS;
//! - a warning when `innodb_doublewrite` is ON on a fuse-ibd datadir.
//!
//! See README.md for installing and using it. No C: everything the plugin ABI needs is
//! expressible with `#[repr(C)]` statics and `extern "C"` functions (`abi.rs`).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub mod abi;
pub mod mount;
pub mod services;
pub mod status;

use abi::*;
use services::{log, Level};
use status::{Local, Status, Value};

// ---------------------------------------------------------------------------------------------
// System variables. The server registers them under the plugin's name:
// `innodb_page_server_` + name. It writes into these structs while registering (default check
// and update functions), and reads the values through the `value` pointers.

static mut ENABLED: c_char = 0;
static mut ADDRESS: *mut c_char = ptr::null_mut();
static mut PORT: c_int = 0;

static mut SYSVAR_ENABLED: SysVarBool = SysVarBool {
    header: SysVarHeader {
        flags: PLUGIN_VAR_BOOL | PLUGIN_VAR_READONLY | PLUGIN_VAR_OPCMDARG,
        name: c"enabled".as_ptr(),
        comment: c"ON when the datadir is a fuse-ibd mount that ships its pages to a page server. \
                   Set ON at startup, it is a requirement: the plugin refuses to load on any other \
                   datadir (with innodb_page_server=FORCE the server refuses to start)."
            .as_ptr(),
        check: None,
        update: None,
    },
    value: &raw mut ENABLED,
    def_val: 0,
};

static mut SYSVAR_ADDRESS: SysVarStr = SysVarStr {
    header: SysVarHeader {
        flags: PLUGIN_VAR_STR | PLUGIN_VAR_READONLY | PLUGIN_VAR_RQCMDARG,
        name: c"address".as_ptr(),
        comment: c"Host of the page server the datadir's fuse-ibd mount ships pages to (from the \
                   mount). Set at startup, the mount must use this host."
            .as_ptr(),
        check: None,
        update: None,
    },
    value: &raw mut ADDRESS,
    def_val: ptr::null(),
};

static mut SYSVAR_PORT: SysVarInt = SysVarInt {
    header: SysVarHeader {
        flags: PLUGIN_VAR_INT | PLUGIN_VAR_READONLY | PLUGIN_VAR_RQCMDARG,
        name: c"port".as_ptr(),
        comment: c"Port of the page server the datadir's fuse-ibd mount ships pages to (from the \
                   mount; 0 when none). Set at startup, the mount must use this port."
            .as_ptr(),
        check: None,
        update: None,
    },
    value: &raw mut PORT,
    def_val: 0,
    min_val: 0,
    max_val: 65535,
    blk_sz: 0,
};

static mut SYSTEM_VARS: [*mut c_void; 4] = [
    (&raw mut SYSVAR_ENABLED).cast(),
    (&raw mut SYSVAR_ADDRESS).cast(),
    (&raw mut SYSVAR_PORT).cast(),
    ptr::null_mut(),
];

// ---------------------------------------------------------------------------------------------
// Status variables. MariaDB prefixes a plugin's status variables with the plugin's name unless
// the first one already starts with it (sql_plugin.cc, plugin_initialize). So the first entry
// is an empty array named after the plugin, which shows nothing and keeps the names as written;
// the second is `Page_server`, a function returning an array: `Page_server_<name>`.

static mut NO_STATUS: [StMysqlShowVar; 1] = [SHOW_VAR_END];

static mut STATUS_VARS: [StMysqlShowVar; 3] = [
    StMysqlShowVar {
        name: c"Innodb_page_server".as_ptr(),
        value: (&raw mut NO_STATUS).cast(),
        type_: SHOW_ARRAY,
    },
    StMysqlShowVar {
        name: c"Page_server".as_ptr(),
        value: show_page_server as ShowVarFunc as *mut c_void,
        type_: SHOW_FUNC,
    },
    SHOW_VAR_END,
];

const N_STATUS: usize = status::VARIABLES.len();

/// What `show_page_server` writes into the server's scratch buffer: the array it returns and
/// the values the array points at.
#[repr(C)]
struct ShowBuffer {
    vars: [StMysqlShowVar; N_STATUS + 1],
    numbers: [u64; N_STATUS],
    flags: [bool; N_STATUS],
}

const _: () = assert!(std::mem::size_of::<ShowBuffer>() <= SHOW_VAR_FUNC_BUFF_SIZE);

/// `SHOW_FUNC` for `Page_server`: one read of the status file per SHOW STATUS, for a
/// consistent snapshot.
///
/// # Safety
/// Called by the server with `var` and `buff` valid for writes, `buff` of
/// `SHOW_VAR_FUNC_BUFF_SIZE` bytes that outlive the use of the returned array.
unsafe extern "C" fn show_page_server(
    _thd: *mut c_void,
    var: *mut StMysqlShowVar,
    buff: *mut c_void,
    _status_var: *mut c_void,
    _scope: c_int,
) -> c_int {
    let values = catch_unwind(current_values).unwrap_or_else(|_| Vec::new());
    let buf = buff.cast::<ShowBuffer>();
    // SAFETY: `buff` holds SHOW_VAR_FUNC_BUFF_SIZE bytes (asserted >= size_of ShowBuffer) and is
    // ours until the server has read the array; unaligned writes make no assumption about its
    // alignment, and the fields are only addressed through raw pointers.
    unsafe {
        let mut end = 0;
        for (i, ((name, _), value)) in status::VARIABLES.iter().zip(&values).enumerate() {
            let (value, type_) = match *value {
                Value::Number(n) => {
                    let slot = &raw mut (*buf).numbers[i];
                    slot.write_unaligned(n);
                    (slot.cast::<c_void>(), SHOW_ULONGLONG)
                }
                Value::Flag(f) => {
                    let slot = &raw mut (*buf).flags[i];
                    slot.write(f);
                    (slot.cast::<c_void>(), SHOW_BOOL)
                }
            };
            let entry = StMysqlShowVar {
                name: name.as_ptr(),
                value,
                type_,
            };
            (&raw mut (*buf).vars[i]).write_unaligned(entry);
            end = i + 1;
        }
        (&raw mut (*buf).vars[end]).write_unaligned(SHOW_VAR_END);
        var.write(StMysqlShowVar {
            name: c"Page_server".as_ptr(),
            value: (&raw mut (*buf).vars).cast(),
            type_: SHOW_ARRAY,
        });
    }
    0
}

/// Every status variable's value, in `status::VARIABLES` order.
fn current_values() -> Vec<Value> {
    let state = lock(&STATE).clone();
    let (snapshot, local) = match &state {
        Some(state) => (state.snapshot(), state.local()),
        None => (Status::default(), Local::default()),
    };
    status::VARIABLES
        .iter()
        .map(|(_, source)| source.value(&snapshot, &local))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The plugin's state between init and deinit.

struct State {
    datadir: PathBuf,
    /// The datadir was a fuse-ibd mount at init.
    mounted: bool,
    status_read_errors: AtomicU64,
    doublewrite_warning: AtomicBool,
    stop: AtomicBool,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl State {
    fn snapshot(&self) -> Status {
        if !self.mounted {
            return Status::default();
        }
        let path = mount::status_path(&self.datadir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Status::parse(&text),
            Err(e) => {
                if self.status_read_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    log(
                        Level::Error,
                        &format!(
                            "cannot read {} ({e}): Page_server_* read 0 until it can be read \
                             again; is fuse-ibd still running?",
                            path.display()
                        ),
                    );
                }
                Status::default()
            }
        }
    }

    fn local(&self) -> Local {
        Local {
            status_read_errors: self.status_read_errors.load(Ordering::Relaxed),
            doublewrite_warning: self.doublewrite_warning.load(Ordering::Relaxed),
        }
    }
}

static STATE: Mutex<Option<Arc<State>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

unsafe extern "C" fn page_server_init(_plugin: *mut c_void) -> c_int {
    let outcome = catch_unwind(init).unwrap_or_else(|_| Err("internal error (panic) in init".into()));
    match outcome {
        Ok(()) => 0,
        Err(msg) => {
            log(Level::Error, &msg);
            // Under INSTALL SONAME the client should see why too, not just "init failed".
            if services::server_started() == Some(true) {
                services::warn_client(&msg);
            }
            1
        }
    }
}

fn init() -> Result<(), String> {
    // mariadbd runs in its datadir (it chdirs there before initialising plugins, and InnoDB
    // opens "./ibdata1" relative to it): the working directory is the datadir.
    let datadir =
        std::env::current_dir().map_err(|e| format!("cannot tell the datadir: getcwd failed: {e}"))?;
    // SAFETY: the server has stored the option values before calling init and does not touch
    // them concurrently; ADDRESS is null or a NUL-terminated string the server owns.
    let requested = unsafe {
        let address = ptr::read(&raw const ADDRESS);
        mount::Requested {
            enabled: ptr::read(&raw const ENABLED) != 0,
            address: (!address.is_null()).then(|| CStr::from_ptr(address).to_string_lossy().into_owned()),
            port: ptr::read(&raw const PORT),
        }
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let probe = mount::probe(&datadir, &mountinfo);
    let settled = mount::settle(&requested, &probe, &datadir)?;

    let address = CString::new(settled.address.clone())
        .map_err(|_| format!("page server host {:?} contains NUL", settled.address))?;
    // SAFETY: as above; the server reads these only after init returns (SHOW VARIABLES), or
    // concurrently under INSTALL SONAME where an aligned pointer/int store is seen whole. The
    // address string is leaked on purpose: the variable may be read until the plugin's
    // variables are gone, which is after deinit.
    unsafe {
        ptr::write(&raw mut ENABLED, c_char::from(settled.enabled));
        ptr::write(&raw mut ADDRESS, address.into_raw());
        ptr::write(&raw mut PORT, settled.port);
    }
    log(Level::Note, &settled.note);

    let state = Arc::new(State {
        datadir,
        mounted: settled.mounted,
        status_read_errors: AtomicU64::new(0),
        doublewrite_warning: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        watcher: Mutex::new(None),
    });
    if settled.mounted {
        let watched = state.clone();
        let handle = std::thread::Builder::new()
            .name("page_server_dblwr".into())
            .spawn(move || check_doublewrite(&watched))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        *lock(&state.watcher) = Some(handle);
    }
    *lock(&STATE) = Some(state);
    Ok(())
}

/// Once the server has started (InnoDB's variables exist only after the daemon plugins are
/// initialised), reads `innodb_doublewrite` and warns if it is ON on this fuse-ibd datadir.
fn check_doublewrite(state: &State) {
    loop {
        if state.stop.load(Ordering::Relaxed) {
            return;
        }
        match services::server_started() {
            Some(true) => break,
            Some(false) => std::thread::sleep(Duration::from_millis(100)),
            None => {
                log(
                    Level::Warning,
                    "cannot tell when the server has started (mysqld_server_started is not \
                     exported), so innodb_doublewrite is not checked",
                );
                return;
            }
        }
    }
    // A boolean variable reads "ON"/"OFF" in a string context, "1"/"0" in a numeric one.
    let value =
        services::with_server_thread(|| services::query_value("SELECT CONCAT(@@GLOBAL.innodb_doublewrite)"))
            .map(|v| v.to_ascii_uppercase());
    match value.as_deref() {
        Ok("ON" | "1") => {
            state.doublewrite_warning.store(true, Ordering::Relaxed);
            log(
                Level::Warning,
                &format!(
                    "innodb_doublewrite=ON on the fuse-ibd datadir {}: every flushed page is \
                     written, and shipped to the page server, twice. fuse-ibd applies each \
                     16 KiB page write whole or not at all, locally and on the page server, so \
                     the doublewrite buffer protects nothing here: set innodb_doublewrite=0.",
                    state.datadir.display()
                ),
            );
        }
        Ok("OFF" | "0") => {}
        Ok(other) => log(
            Level::Warning,
            &format!("innodb_doublewrite reads {other:?}, expected ON or OFF, so it is not checked"),
        ),
        Err(e) => log(
            Level::Warning,
            &format!("cannot read innodb_doublewrite, so it is not checked: {e}"),
        ),
    }
}

unsafe extern "C" fn page_server_deinit(_plugin: *mut c_void) -> c_int {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let state = lock(&STATE).take();
        if let Some(state) = state {
            state.stop.store(true, Ordering::Relaxed);
            let watcher = lock(&state.watcher).take();
            if let Some(watcher) = watcher {
                let _ = watcher.join();
            }
        }
    }));
    0
}

// ---------------------------------------------------------------------------------------------
// The declaration the server looks up in the library (plugin.h, `maria_declare_plugin`).

static mut DAEMON: StMysqlDaemon = StMysqlDaemon {
    interface_version: MYSQL_DAEMON_INTERFACE_VERSION,
};

// SAFETY (no_mangle): the server finds the plugin by these exact C names.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static _maria_plugin_interface_version_: c_int = MARIA_PLUGIN_INTERFACE_VERSION;

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static _maria_sizeof_struct_st_plugin_: c_int = std::mem::size_of::<StMariaPlugin>() as c_int;

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut _maria_plugin_declarations_: [StMariaPlugin; 2] = [
    StMariaPlugin {
        type_: MYSQL_DAEMON_PLUGIN,
        info: (&raw mut DAEMON).cast(),
        name: c"innodb_page_server".as_ptr(),
        author: c"fuse-ibd project".as_ptr(),
        descr: c"innodb_page_server_* variables and Page_server_* status of the fuse-ibd mount \
                 under the datadir"
            .as_ptr(),
        license: PLUGIN_LICENSE_BSD,
        init: Some(page_server_init),
        deinit: Some(page_server_deinit),
        version: 0x0100,
        status_vars: (&raw mut STATUS_VARS).cast(),
        system_vars: (&raw mut SYSTEM_VARS).cast(),
        version_info: c"1.0".as_ptr(),
        maturity: MARIADB_PLUGIN_MATURITY_GAMMA,
    },
    PLUGIN_END,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_function_fills_the_scratch_buffer_with_a_terminated_array() {
        // Without init the plugin has no state: every value reads 0 / OFF.
        let mut buff = vec![0u64; SHOW_VAR_FUNC_BUFF_SIZE / 8];
        let mut var = SHOW_VAR_END;
        // SAFETY: a buffer of SHOW_VAR_FUNC_BUFF_SIZE bytes and a valid var, as the server passes.
        let rc = unsafe {
            show_page_server(
                ptr::null_mut(),
                &mut var,
                buff.as_mut_ptr().cast(),
                ptr::null_mut(),
                0,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(var.type_, SHOW_ARRAY);
        let entries = var.value.cast::<StMysqlShowVar>();
        let mut names = Vec::new();
        for i in 0.. {
            // SAFETY: the array written above, terminated by a null name.
            let e = unsafe { entries.add(i).read() };
            if e.name.is_null() {
                break;
            }
            // SAFETY: names are static C strings; values point into `buff`.
            let name = unsafe { CStr::from_ptr(e.name) }.to_str().unwrap().to_string();
            match e.type_ {
                SHOW_ULONGLONG => assert_eq!(unsafe { e.value.cast::<u64>().read() }, 0, "{name}"),
                SHOW_BOOL => assert!(!unsafe { e.value.cast::<bool>().read() }, "{name}"),
                other => panic!("{name}: type {other}"),
            }
            names.push(name);
        }
        assert_eq!(names.len(), status::VARIABLES.len());
        assert!(names.contains(&"pages_uploaded".to_string()));
    }

    #[test]
    fn the_declaration_names_the_plugin_and_its_variables() {
        // SAFETY: reading statics nothing else writes in this test process, through raw
        // pointers (no references to `static mut`).
        unsafe {
            let decl = &raw const _maria_plugin_declarations_;
            assert_eq!(CStr::from_ptr((*decl)[0].name), c"innodb_page_server");
            assert!(
                (*decl)[1].info.is_null() && (*decl)[1].name.is_null(),
                "terminated"
            );
            let vars = (&raw const SYSTEM_VARS).read();
            let names: Vec<&CStr> = vars[..3]
                .iter()
                .map(|v| CStr::from_ptr((*v.cast::<SysVarHeader>()).name))
                .collect();
            assert_eq!(names, [c"enabled", c"address", c"port"]);
            assert!(vars[3].is_null());
            // The first status entry must start with the plugin's name (case-insensitively),
            // or the server would prefix every name with it.
            let status = (&raw const STATUS_VARS).read();
            let first = CStr::from_ptr(status[0].name).to_str().unwrap();
            assert!(first.to_ascii_lowercase().starts_with("innodb_page_server"));
        }
    }
}
