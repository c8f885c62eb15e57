//! What `fl_field` and `fl_remote` hold: the parsed config, a tokio runtime of their own,
//! the SDK device once started, the callbacks, and the event thread that calls them.

use std::ffi::c_char;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use fieldlink_sdk::config::{base_dir, DeviceFile};
use fieldlink_sdk::{
    DeviceConfig, ErrorCode, Event, Events, FieldDevice, RemoteDevice, Role, SdkError,
};

use crate::callbacks::{dispatch, Callbacks};
use crate::status::{bad, text, Res};

/// What the handle needs of an SDK device.
pub(crate) trait Device: Send + Sync + Sized + 'static {
    const ROLE: Role;
    fn connect(cfg: DeviceConfig) -> impl Future<Output = Res<(Self, Events)>> + Send;
    fn close(self) -> impl Future<Output = ()> + Send;
}

impl Device for FieldDevice {
    const ROLE: Role = Role::Field;
    fn connect(cfg: DeviceConfig) -> impl Future<Output = Res<(Self, Events)>> + Send {
        FieldDevice::connect(cfg)
    }
    fn close(self) -> impl Future<Output = ()> + Send {
        FieldDevice::close(self)
    }
}

impl Device for RemoteDevice {
    const ROLE: Role = Role::Remote;
    fn connect(cfg: DeviceConfig) -> impl Future<Output = Res<(Self, Events)>> + Send {
        RemoteDevice::connect(cfg)
    }
    fn close(self) -> impl Future<Output = ()> + Send {
        RemoteDevice::close(self)
    }
}

/// Something the event thread does with each event before the callbacks (the remote's
/// internal rendering).
pub(crate) type Hook = Box<dyn FnMut(&Event) + Send>;

pub(crate) struct Handle<D: Device> {
    pub file: DeviceFile,
    /// Relative paths of the config are taken from here.
    pub dir: PathBuf,
    rt: Option<tokio::runtime::Runtime>,
    dev: OnceLock<D>,
    pub callbacks: Arc<Mutex<Callbacks>>,
    events: Mutex<Option<JoinHandle<()>>>,
    event_thread: OnceLock<ThreadId>,
}

impl<D: Device> Handle<D> {
    /// From a config: a path, or the JSON text itself when it starts with `{`.
    pub fn create(config: *const c_char) -> Res<Handle<D>> {
        let config = text(config, "config")?;
        let (file, dir) = if config.trim_start().starts_with('{') {
            (DeviceFile::parse(config, D::ROLE)?, PathBuf::from("."))
        } else {
            let path = Path::new(config);
            (DeviceFile::load(path, D::ROLE)?, base_dir(path))
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fieldlink")
            .enable_all()
            .build()
            .map_err(|e| SdkError::new(ErrorCode::Internal, format!("tokio runtime: {e}")))?;
        Ok(Handle {
            file,
            dir,
            rt: Some(rt),
            dev: OnceLock::new(),
            callbacks: Arc::default(),
            events: Mutex::new(None),
            event_thread: OnceLock::new(),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives until drop")
    }

    /// Runs `f` to completion on the device's runtime (the calling thread waits).
    pub fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt().block_on(f)
    }

    /// Logs in with `cfg`, then starts the event thread (with `hook` first for every
    /// event) and runs `after` on the device.
    pub fn start(
        &self,
        cfg: DeviceConfig,
        mut hook: Option<Hook>,
        after: impl FnOnce(&D) -> Res<()>,
    ) -> Res<()> {
        if self.dev.get().is_some() {
            return Err(SdkError::new(ErrorCode::Conflict, "already started"));
        }
        let (dev, mut events) = self.block_on(D::connect(cfg))?;
        if self.dev.set(dev).is_err() {
            return Err(SdkError::new(ErrorCode::Conflict, "already started"));
        }
        let callbacks = self.callbacks.clone();
        let handle = self.rt().handle().clone();
        let thread = std::thread::Builder::new()
            .name("fieldlink-events".into())
            .spawn(move || {
                while let Some(ev) = handle.block_on(events.recv()) {
                    // A panic in our part of the dispatch must not end the thread (and
                    // with it every later callback); the program's callbacks are C.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if let Some(h) = hook.as_mut() {
                            h(&ev);
                        }
                        let cb = *callbacks.lock().unwrap_or_else(|p| p.into_inner());
                        dispatch(&ev, &cb);
                    }));
                }
            })
            .map_err(|e| SdkError::new(ErrorCode::Internal, format!("event thread: {e}")))?;
        let _ = self.event_thread.set(thread.thread().id());
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        // `after` may spawn tasks (video sources): inside the runtime.
        let _rt = self.rt().enter();
        after(self.device()?)
    }

    /// The started device (`NOT_LOGGED_IN` before `*_start`).
    pub fn device(&self) -> Res<&D> {
        self.dev.get().ok_or_else(|| {
            SdkError::new(ErrorCode::NotLoggedIn, "call fl_*_start first (it logs in)")
        })
    }

    /// True on the event thread (inside a callback).
    pub fn in_callback(&self) -> bool {
        self.event_thread.get() == Some(&std::thread::current().id())
    }

    /// Logs out, waits for the event thread to finish its last callback, stops the runtime.
    pub fn close(mut self) {
        if let Some(dev) = self.dev.take() {
            self.block_on(dev.close());
        }
        if let Some(t) = self.events.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        if let Some(rt) = self.rt.take() {
            // Video sources and cameras stop with the device; a blocked camera read must
            // not hold the program's free() for long.
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// The handle behind a C pointer (`what` names it in the error).
pub(crate) fn get<'a, T>(p: *const T, what: &str) -> Res<&'a T> {
    if p.is_null() {
        return Err(bad(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL, and by the API's contract a live handle from `fl_*_create`.
    Ok(unsafe { &*p })
}
