//! Piko Connector: the tray app that exposes local services through a Piko server.
//!
//! All connector logic lives in `piko-connector-core`; this crate is the desktop shell:
//! - [`view`]: the view model the window and the tray share, computed from the core's state;
//! - [`state`]: the running core (and its inspector) as Tauri managed state;
//! - [`commands`]: thin `#[tauri::command]` wrappers, each failing with the core's one-line error;
//! - [`events`]: the core's status, log and inspector streams pushed to the page as events;
//! - [`tray`]: the tray icon (three looks), tooltip and menu;
//! - [`diagnostics`]: the support report ("Copy diagnostics"), without secrets.
//!
//! The window's page is static HTML/CSS/JS in `ui/` (no bundler), using `window.__TAURI__`.

// Tests unwrap freely: a panic there is a failed test with its message.
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![warn(missing_docs)]

pub mod commands;
pub mod diagnostics;
pub mod events;
pub mod state;
pub mod tray;
pub mod view;

use tauri::{Manager, RunEvent, WindowEvent};
use tauri_plugin_autostart::MacosLauncher;

/// The argument autostart passes, so that a launch at login starts in the tray only.
pub const HIDDEN_ARG: &str = "--hidden";

/// Register the app's commands on a builder (shared by [`run`] and the wiring tests).
#[macro_export]
macro_rules! handler {
    () => {
        tauri::generate_handler![
            $crate::commands::snapshot,
            $crate::commands::add_endpoint,
            $crate::commands::update_endpoint,
            $crate::commands::remove_endpoint,
            $crate::commands::set_endpoint_enabled,
            $crate::commands::test_target,
            $crate::commands::sign_in,
            $crate::commands::sign_out,
            $crate::commands::set_preferences,
            $crate::commands::copy_text,
            $crate::commands::logs_tail,
            $crate::commands::open_log_folder,
            $crate::commands::copy_diagnostics,
            $crate::commands::inspector_list,
            $crate::commands::inspector_get,
            $crate::commands::inspector_replay,
        ]
    };
}

/// Run the app until the user quits.
pub fn run() -> anyhow::Result<()> {
    let hidden = std::env::args().any(|a| a == HIDDEN_ARG);
    let builder = tauri::Builder::default()
        // First: a second launch hands over to this process and exits.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
            tray::show_window(app);
        }))
        .plugin(tauri_plugin_autostart::init(
            MacosLauncher::LaunchAgent,
            Some(vec![HIDDEN_ARG]),
        ))
        .plugin(tauri_plugin_clipboard_manager::init())
        .plugin(tauri_plugin_opener::init())
        .invoke_handler(handler!());
    #[cfg(feature = "notifications")]
    let builder = builder.plugin(tauri_plugin_notification::init());
    let app = builder
        .setup(move |app| {
            let handle = app.handle().clone();
            let options = state::StartOptions::from_os()?;
            let state = tauri::async_runtime::block_on(state::AppState::start(options));
            app.manage(state);
            events::start(&handle)?;
            if hidden {
                if let Some(w) = app.get_webview_window("main") {
                    w.hide()?;
                }
            }
            Ok(())
        })
        .on_window_event(|window, event| {
            // Closing the window keeps the app (and its tunnels) running in the tray.
            if let WindowEvent::CloseRequested { api, .. } = event {
                api.prevent_close();
                let _ = window.hide();
            }
        })
        .build(tauri::generate_context!())?;
    app.run(|app, event| match event {
        // Without a window the app stays in the tray; only "Quit" (an exit code) leaves.
        RunEvent::ExitRequested {
            code: None, api, ..
        } => api.prevent_exit(),
        RunEvent::Exit => {
            if let Some(state) = app.try_state::<state::AppState>() {
                tauri::async_runtime::block_on(state.shutdown());
            }
        }
        _ => {}
    });
    Ok(())
}
