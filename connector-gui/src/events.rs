//! Events (provisional).
use tauri::{AppHandle, Manager, Runtime};

/// Start.
pub fn start<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<()> {
    let view = app.state::<crate::state::AppState>().view();
    crate::tray::create(app, &view, |app, action| {
        if action == crate::tray::TrayAction::Quit {
            app.exit(0)
        } else if action == crate::tray::TrayAction::Open {
            crate::tray::show_window(app)
        }
    })?;
    Ok(())
}
