//! The agent as a Windows service: registered with the Service Control Manager to start at
//! boot and restart after a failure. The SCM runs `piko service run --config.path F`, which
//! hands the process to the SCM's dispatcher and runs `agent start` until the SCM says stop.

use std::ffi::{OsStr, OsString};
use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use super::{Spec, NAME};
use crate::exit::Failure;

fn scm_error(what: &str) -> impl Fn(windows_service::Error) -> Failure + '_ {
    move |e| Failure::Runtime(format!("{what}: {e}; run from an administrator prompt"))
}

/// Register the service (start at boot, restart 5 s after a failure) and, when `start`,
/// start it now.
pub(crate) fn install(spec: &Spec, start: bool) -> Result<(), Failure> {
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(scm_error("cannot open the service manager"))?;
    let info = ServiceInfo {
        name: OsString::from(NAME),
        display_name: OsString::from("Piko agent"),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: spec.exe.clone(),
        launch_arguments: vec![
            "service".into(),
            "run".into(),
            "--config.path".into(),
            spec.config.clone().into_os_string(),
        ],
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    let service = manager
        .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)
        .map_err(scm_error("cannot create the service piko"))?;
    service
        .set_description("Exposes local services through a Piko server (piko agent start)")
        .map_err(scm_error("cannot describe the service"))?;
    let restart = ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(5),
    };
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart.clone(), restart.clone(), restart]),
        })
        .map_err(scm_error("cannot set the service's restart policy"))?;
    if start {
        service
            .start(&[] as &[&OsStr])
            .map_err(scm_error("cannot start the service"))?;
    }
    Ok(())
}

/// Stop the service (when `stop`) and remove it from the service manager.
pub(crate) fn uninstall(stop: bool) -> Result<(), Failure> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(scm_error("cannot open the service manager"))?;
    let service = manager
        .open_service(
            NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .map_err(scm_error("cannot open the service piko (is it installed?)"))?;
    if stop {
        let running = service
            .query_status()
            .map(|s| s.current_state != ServiceState::Stopped)
            .unwrap_or(false);
        if running {
            service
                .stop()
                .map_err(scm_error("cannot stop the service"))?;
        }
    }
    service
        .delete()
        .map_err(scm_error("cannot remove the service"))
}

/// The config file the dispatched service runs with (set before the dispatcher starts).
static CONFIG: OnceLock<std::path::PathBuf> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// `piko service run`: serve the SCM until it says stop. Only the SCM starts this.
pub(crate) fn run(config: std::path::PathBuf) -> Result<(), Failure> {
    let _ = CONFIG.set(config);
    service_dispatcher::start(NAME, ffi_service_main).map_err(|e| {
        Failure::Usage(format!(
            "`piko service run` is started by the Windows service manager ({e}); use `piko agent start` to run the agent yourself"
        ))
    })
}

fn service_main(_args: Vec<OsString>) {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            stop.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let Ok(status) = service_control_handler::register(NAME, handler) else {
        return;
    };
    let report = |state, code| {
        let _ = status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if state == ServiceState::Running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            },
            exit_code: ServiceExitCode::Win32(code),
            checkpoint: 0,
            wait_hint: Duration::from_secs(70),
            process_id: None,
        });
    };
    report(ServiceState::Running, 0);
    let config = CONFIG.get().cloned().unwrap_or_else(super::default_config);
    let result = crate::commands::agent_service(config, shutdown);
    // A non-zero exit code makes the SCM apply the restart policy.
    report(ServiceState::Stopped, if result.is_ok() { 0 } else { 1 });
}
